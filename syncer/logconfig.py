"""Structured logging: one JSON object per line by default, readable lines for humans.

Every record, ours or Django's, goes through structlog's ProcessorFormatter, and every
value is scrubbed before it is written: texts by `syncer.text.redact` (the one
redaction of the product), and the whole value of fields named like a secret.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

# structlog's package imports, whenever they are installed, its Twisted integration
# (Twisted is, for daphne), rich (for CEL's command line, to render exceptions) and
# greenlet (for the browser tests, in its deprecated thread-local context). No process
# here logs through Twisted, and rich and greenlet would never be used: exceptions
# reach the renderers as text already (`format_exc_info` below) and contexts are
# contextvars. So each import of them by structlog fails as if the package were missing,
# which structlog expects: the worker loads 1.7 + 5.4 + 1.1 MB less (docs/benchmarks.md).
# Twisted's stays declined in this process; rich and greenlet only while structlog is
# imported, so whatever else uses them (CEL, playwright) imports them as usual.
sys.modules.setdefault("structlog.twisted", None)  # type: ignore[arg-type]  # None: a documented refusal
_ONLY_FOR_STRUCTLOG = [name for name in ("rich", "greenlet") if name not in sys.modules]
sys.modules.update(dict.fromkeys(_ONLY_FOR_STRUCTLOG))  # type: ignore[arg-type]
try:
    import structlog
finally:
    for _name in _ONLY_FOR_STRUCTLOG:
        if sys.modules.get(_name, ...) is None:
            del sys.modules[_name]
from structlog.typing import EventDict, Processor, WrappedLogger  # noqa: E402

from syncer.text import SECRET_FIELD, environment_secrets, redact  # noqa: E402

__all__ = ["configure_structlog", "logging_config", "scrub"]


def scrub(value: Any, secrets: list[str] | None = None) -> Any:
    """`value` with every secret hidden: strings, and inside dicts, lists and tuples."""
    secrets = environment_secrets() if secrets is None else secrets
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {
            key: "***"
            if isinstance(key, str) and SECRET_FIELD.fullmatch(key) and value_ is not None
            else scrub(value_, secrets)
            for key, value_ in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(scrub(item, secrets) for item in value)
    return value


def _redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    secrets = environment_secrets()
    for key, value in event_dict.items():
        if SECRET_FIELD.fullmatch(key) and value is not None:
            event_dict[key] = "***"
        elif isinstance(value, str | dict | list | tuple):
            event_dict[key] = scrub(value, secrets)
    return event_dict


SHARED_PROCESSORS: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
    _redact_secrets,
]


LIBRARY_LOGGERS = ("opensearch", "opensearchpy", "urllib3", "aiohttp")
"""Loggers of the drivers whose records are kept to one line (`LibraryOneLine`)."""


class LibraryOneLine(logging.Filter):
    """A driver's record as one line: its message and the exception's, never the stack.

    During an outage opensearch-py logs every failed request with a full traceback; our
    own `sink_unavailable` / `sink_retrying` lines already say what failed and what comes
    next, and must not drown in the drivers' stacks.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.startswith(LIBRARY_LOGGERS):
            error = record.exc_info[1]
            if error is not None:
                record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
                record.args = None
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return True


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
        "filters": {"library_one_line": {"()": LibraryOneLine}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "structured",
                "filters": ["library_one_line"],
            }
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # opensearch-py warns once per failed request, which the sink translates into
            # our own lines (sink_unavailable, sink_retrying, documents_retrying, the
            # /ready reasons); only its errors add anything.
            "opensearch": {"level": "ERROR"},
            "urllib3": {"level": "WARNING"},
            "aiohttp": {"level": "WARNING"},
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
