"""Django system checks for the worker's settings (ids syncer.E001...).

syncer.E006 (no SECRET_KEY with DEBUG off) is a deployment check: `manage.py migrate` or
`check` run without a key, but `check --deploy` fails, and the processes that serve
(the ASGI and WSGI applications, `runsyncer`) refuse to start through
`require_secret_key`.

The worker's checks carry the tag `syncer` (`manage.py check --tag syncer`): `runsyncer`
runs them and Django's model checks, not the web's (the URL checks would import the
console's URL conf: the admin, the API and django-ninja, which the worker never loads).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.exceptions import ImproperlyConfigured

from syncer import conf

SECRET_KEY_HINT = (
    "Set SECRET_KEY to a long random value, the same for the web process and the worker, "
    "e.g. SECRET_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(50))'); "
    "for a local try on your own machine, set DEBUG=1 instead."
)

WORKER_TAG = "syncer"
"""The tag of the worker's own settings checks."""


@register(WORKER_TAG)
def check_worker_settings(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if not str(getattr(settings, "OPENSEARCH_URL", "")).startswith(("http://", "https://")):
        errors.append(
            Error(
                "OPENSEARCH_URL must be an http:// or https:// URL.",
                hint="Set OPENSEARCH_URL, e.g. http://127.0.0.1:9200.",
                id="syncer.E001",
            )
        )
    if float(getattr(settings, "SYNCER_POLL_INTERVAL", 1.0)) <= 0:
        errors.append(
            Error("SYNCER_POLL_INTERVAL must be positive.", hint="e.g. 1", id="syncer.E002")
        )
    if float(getattr(settings, "SYNCER_SHUTDOWN_TIMEOUT", 30)) <= 0:
        errors.append(
            Error("SYNCER_SHUTDOWN_TIMEOUT must be positive.", hint="e.g. 30", id="syncer.E003")
        )
    if getattr(settings, "LOG_FORMAT", "json") not in {"json", "console"}:
        errors.append(
            Error("LOG_FORMAT must be json or console.", hint="e.g. json", id="syncer.E004")
        )
    if int(getattr(settings, "SYNCER_MAX_ATTEMPTS", 3)) < 1:
        errors.append(
            Error("SYNCER_MAX_ATTEMPTS must be at least 1.", hint="e.g. 3", id="syncer.E005")
        )
    if int(getattr(settings, "SYNCER_BULK_CONCURRENCY", 1)) < 1:
        errors.append(
            Error(
                "SYNCER_BULK_CONCURRENCY must be at least 1: it is how many bulk requests "
                "one subscription keeps in flight.",
                hint="e.g. 1 (osmem applies one bulk at a time), 2-4 for an OpenSearch cluster",
                id="syncer.E016",
            )
        )
    if int(getattr(settings, "SYNCER_COPY_RANGE_ROWS", 50_000)) < 1:
        errors.append(
            Error(
                "SYNCER_COPY_RANGE_ROWS must be at least 1: it is how many rows a shared "
                "copy's range holds, as planned.",
                hint="e.g. 50000",
                id="syncer.E017",
            )
        )
    if int(getattr(settings, "SYNCER_API_DLQ_MAX", 1000)) < 1:
        errors.append(
            Error("SYNCER_API_DLQ_MAX must be at least 1.", hint="e.g. 1000", id="syncer.E007")
        )
    try:
        conf.nats()
    except ValueError as exc:  # the message names the setting and what JetStream wants
        errors.append(Error(str(exc), hint="See docs/nats.md.", id="syncer.E014"))
    else:
        try:
            conf.live_matching()
        except ValueError as exc:  # the message names the setting and what it must be
            errors.append(Error(str(exc), hint="See the README's settings.", id="syncer.E015"))
    errors.extend(_live_subscription_problems())
    return errors


def _live_subscription_problems() -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if float(getattr(settings, "LIVE_SUBSCRIPTION_TTL_SECONDS", 300)) <= 0:
        errors.append(
            Error(
                "LIVE_SUBSCRIPTION_TTL_SECONDS must be positive: a live subscription would "
                "expire as it is registered.",
                hint="e.g. 300",
                id="syncer.E008",
            )
        )
    for name, default, hint in (
        ("LIVE_SUBSCRIPTIONS_PER_OWNER", 10_000, "e.g. 10000"),
        ("LIVE_SUBSCRIPTIONS_MAX", 200_000, "e.g. 200000"),
    ):
        if int(getattr(settings, name, default)) < 1:
            errors.append(
                Error(
                    f"{name} must be at least 1: no live subscription could be registered.",
                    hint=hint,
                    id="syncer.E009",
                )
            )
    if int(getattr(settings, "LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION", 0)) < 0:
        errors.append(
            Error(
                "LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION must not be negative.",
                hint="e.g. 350, or 0 to require a pinned value in every filter",
                id="syncer.E010",
            )
        )
    return errors


@register(Tags.security, deploy=True)
def check_secret_key(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    if not conf.secret_key_missing():
        return []
    return [
        Error(
            "SECRET_KEY is not set and DEBUG is off: sessions, CSRF tokens and password "
            "resets would be signed with a public key.",
            hint=SECRET_KEY_HINT,
            id="syncer.E006",
        )
    ]


def require_secret_key(process: str) -> None:
    """Refuse to start `process` (e.g. `the worker`) with the public key; say what to set."""
    if conf.secret_key_missing():
        raise ImproperlyConfigured(
            f"refusing to start {process}: SECRET_KEY is not set and DEBUG is off "
            f"(syncer.E006). {SECRET_KEY_HINT}"
        )
