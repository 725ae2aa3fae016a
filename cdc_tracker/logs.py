"""Logging set-up: human-readable on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def configure(
    format: Literal["auto", "console", "json"] = "auto", level: str = "info"
) -> None:
    """Route structlog to stderr; quiet the chatty third-party loggers."""
    global _json_lines  # noqa: PLW0603 -- one switch for the whole process
    use_console = format == "console" or (format == "auto" and sys.stderr.isatty())
    _json_lines = not use_console
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_StderrLogger,
        cache_logger_on_first_use=False,
    )
    for noisy in ("httpx", "httpcore", "psycopg", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # What libraries log (psycopg's pool losing its server, say) in the same
    # format as ours, not as bare text in the middle of JSON lines.
    _LIBRARIES.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    if _LIBRARIES not in root.handlers:
        root.addHandler(_LIBRARIES)
    root.setLevel(_LEVELS[level])


def json_lines() -> bool:
    """Whether logs go out as JSON lines: then so must the error that ends a
    command (a log shipper reads stderr whole)."""
    return _json_lines


_json_lines = False


def forget_format() -> None:
    """Back to plain text until ``configure`` is called again."""
    global _json_lines  # noqa: PLW0603
    _json_lines = False


class _StderrHandler(logging.Handler):
    """A ``logging`` handler writing to whatever ``sys.stderr`` is (see below)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _StderrLogger().msg(self.format(record))
        except Exception:  # logging must never raise
            self.handleError(record)


_LIBRARIES = _StderrHandler()


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is at that moment.

    Binding the stream at configuration time breaks when it is replaced later (a
    test's captured stderr is closed once the test ends).
    """

    def __init__(self, *args: object) -> None:
        del args

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg


def asked_json(flag: str | None) -> bool:
    """Whether ``--log-format`` (``flag``), else the environment, asks for JSON
    lines; if so, the logs are configured for them."""
    asked = flag or os.environ.get("CDC_TRACKER_LOG_FORMAT", "")
    if asked.lower() != "json":  # as the settings read it: JSON, not " json"
        return False
    configure("json", "info")
    return True
