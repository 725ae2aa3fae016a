"""Logging set-up: human-readable on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def configure(
    format: Literal["auto", "console", "json"] = "auto", level: str = "info"
) -> None:
    """Route structlog to stderr; quiet the chatty third-party loggers."""
    use_console = format == "console" or (format == "auto" and sys.stderr.isatty())
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
