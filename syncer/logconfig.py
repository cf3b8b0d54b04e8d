"""Structured logging: one JSON object per line by default, readable lines for humans.

Every record, ours or Django's, goes through structlog's ProcessorFormatter, and every
string value is scrubbed of passwords in DSNs and URLs before it is written.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(?P<head>password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide the password of any DSN or URL in `text`."""
    text = _URL_PASSWORD.sub(r"\g<head>***@", text)
    return _KV_PASSWORD.sub(r"\g<head>***", text)


def _redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


SHARED_PROCESSORS: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
    _redact_secrets,
]


def logging_config(fmt: str, level: str) -> dict[str, Any]:
    """Return the `LOGGING` dict for Django: structlog rendering for every logger."""
    renderer: Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    renderer,
                ],
                "foreign_pre_chain": SHARED_PROCESSORS,
            }
        },
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # Per-request chatter of the drivers is not an operator's business.
            "opensearch": {"level": "WARNING"},
            "psycopg": {"level": "WARNING"},
            # Logs every request body as a curl line: documents, which may be private.
            "opensearchpy.trace": {"level": "WARNING", "propagate": False},
        },
    }


def configure_structlog() -> None:
    """Route structlog loggers through the stdlib handlers configured above."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
