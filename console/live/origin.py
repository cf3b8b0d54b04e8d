"""Which websocket handshakes the Origin check lets through.

Browsers always send an `Origin` on a websocket handshake, and the check (channels'
AllowedHostsOriginValidator) stops another site's page from using a staff session.
A service such as a gateway sends none, and authenticates with an API token, which no
other site's page holds: on the live-subscription socket a handshake without an Origin
skips the check. One with an Origin is still checked, so a page of another site is
refused there too.
"""

from __future__ import annotations

from typing import Any

from channels.security.websocket import AllowedHostsOriginValidator

SERVICE_PATHS = frozenset({"/ws/live/"})


class OriginCheck:
    """AllowedHostsOriginValidator around `application`, except for a handshake on one
    of SERVICE_PATHS that carries no Origin."""

    def __init__(self, application: Any) -> None:
        self.application = application
        self.checked = AllowedHostsOriginValidator(application)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        has_origin = any(name == b"origin" for name, _ in scope.get("headers", []))
        if scope.get("path") in SERVICE_PATHS and not has_origin:
            return await self.application(scope, receive, send)
        return await self.checked(scope, receive, send)
