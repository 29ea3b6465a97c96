"""Structured JSON logs.

Context such as ``request_id`` and ``event_id`` is bound with
:func:`log_context` at the edge of a request or a message and appears on every
line logged while handling it. It is one ``ContextVar`` holding a small dict
rather than structlog's one-variable-per-key contextvars: binding it costs
about a microsecond, which matters on the webhook path where every request
binds and almost none logs.

Redaction processors drop values of keys that look like secrets and the
password of any URL in a value (a database or broker URL in an error message),
as a second line of defence behind ``SecretStr`` and password-free reprs.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

import orjson
import structlog

_SECRET_KEY = re.compile(r"secret|token|password|authorization|api_key|signature", re.IGNORECASE)
# scheme://user:password@ -> scheme://user:[redacted]@
_URL_PASSWORD = re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]*@")
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("log_context", default=MappingProxyType({}))


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Add ``values`` to every log line written inside the block."""
    token = _CONTEXT.set({**_CONTEXT.get(), **values})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> Mapping[str, Any]:
    return _CONTEXT.get()


def _merge_context(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in _CONTEXT.get().items():
        event_dict.setdefault(key, value)
    return event_dict


def _redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in event_dict:
        if _SECRET_KEY.search(key):
            event_dict[key] = "[redacted]"
    return event_dict


def _redact_url_passwords(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str) and "://" in value:
            event_dict[key] = _URL_PASSWORD.sub(r"\g<keep>[redacted]@", value)
    return event_dict


def _dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure_logging(service: str, level: str = "INFO") -> None:
    log_level = logging.getLevelName(level.upper())
    # Third-party libraries log through the stdlib; route them to stderr at
    # WARNING so their lines do not drown ours.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s %(message)s")
    structlog.configure(
        processors=processors(),
        wrapper_class=structlog.make_filtering_bound_logger(log_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Set before the event loop starts: every task inherits it.
    _CONTEXT.set({"service": service})


def processors() -> list[structlog.typing.Processor]:
    """What every log line goes through, last the JSON rendering."""
    return [
        _merge_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
        structlog.processors.format_exc_info,
        # After format_exc_info: a traceback's text is redacted too.
        _redact_url_passwords,
        structlog.processors.JSONRenderer(serializer=_dumps),
    ]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
