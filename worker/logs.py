"""structlog, configured once: JSON off a terminal, readable on one, secrets masked."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from reconcile.redact import redact
from worker.printable import printable

_SECRET_KEY = re.compile(r"(secret|api_key|apikey|password|token|authorization|signature)", re.I)

_configured = False


class _StderrLogger:
    """Writes to whatever ``sys.stderr`` is *now*.

    structlog's PrintLogger keeps the stream it was created with; when that stream is
    swapped out and closed (a test runner capturing output, a daemonised process), every
    later log call would raise and take the request or task down with it.
    """

    def msg(self, message: str) -> None:
        # A closed or broken stderr must never fail the work being logged.
        with contextlib.suppress(ValueError, OSError):
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _logger_factory(*_: Any) -> _StderrLogger:
    return _StderrLogger()


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) else _redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    return value


def redact_processor(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if _SECRET_KEY.search(key):
            event_dict[key] = "***"
        else:
            event_dict[key] = _redact(event_dict[key])
    return event_dict


def _shown(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k): _shown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_shown(v) for v in value)
    return value


def printable_processor(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Control characters in logged values shown as escapes: the console renderer writes
    strings as they are, so a note or a Stripe field could drive the reader's terminal.
    (JSON escapes them already.)"""
    for key in list(event_dict):
        event_dict[key] = _shown(event_dict[key])
    return event_dict


class _PrintableFormatter(logging.Formatter):
    """The standard library's log lines, with control characters shown as escapes."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        # A traceback keeps its lines; a line cannot carry an escape sequence.
        return "\n".join(printable(line) for line in super().formatException(ei).splitlines())


def configure_logging(json: bool | None = None, level: int = logging.INFO) -> None:
    global _configured
    if _configured:
        return
    _configured = True
    if json is None:
        json = not sys.stderr.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_processor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    if not json:
        shared.append(printable_processor)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
