"""Whose admin login failed: the address django-axes counts failures against."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """REMOTE_ADDR; behind `LOGIN_PROXY_COUNT` proxies, the address the outermost one saw.

    Each proxy appends the address it was reached from to X-Forwarded-For, so the client's
    is that many entries from the right; whatever a client wrote itself sits further left
    and is never believed.
    """
    remote = request.META.get("REMOTE_ADDR")
    proxies = int(getattr(settings, "LOGIN_PROXY_COUNT", 0))
    if proxies <= 0:
        return remote
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    return hops[-proxies] if len(hops) >= proxies else remote
