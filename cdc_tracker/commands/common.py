"""What every subcommand shares: settings from the flags, and signal handling."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from cdc_tracker import logs
from cdc_tracker.errors import EXIT_INTERRUPTED, ConfigError
from cdc_tracker.settings import (
    DEFAULT_RULEBOOK,
    Settings,
    load_settings,
    unknown_variables,
)

log = structlog.get_logger(__name__)


def settings_from(
    args: argparse.Namespace, *, quiet: bool = False, **extra: Any
) -> Settings:
    """Settings from ``--config``, the environment and the common flags (``extra``
    adds command flags; ``None`` values are ignored); logging is set up from them.
    ``quiet`` logs warnings and errors only unless ``--log-level`` says otherwise.
    """
    level = getattr(args, "log_level", None) or ("warning" if quiet else None)
    flags = {
        "dsn": getattr(args, "dsn", None),
        "rulebook": getattr(args, "rulebook", None),
        "log_format": getattr(args, "log_format", None),
        "log_level": level,
        **extra,
    }
    settings = load_settings(getattr(args, "config", None), overrides=flags)
    logs.configure(settings.log_format, settings.log_level)
    for variable in unknown_variables():
        log.warning("unknown environment variable ignored", variable=variable)
    return settings


def add_rulebook(sub: argparse.ArgumentParser) -> None:
    """The rulebook a command reads: ``RULEBOOK``, or ``--rulebook`` as ``run`` and
    ``replay`` take it, or else the one the environment names (see ``rulebook_of``).
    """
    sub.add_argument(
        "rulebook_file",
        type=Path,
        nargs="?",
        metavar="RULEBOOK",
        help="the rulebook (default: the one --config or CDC_TRACKER_RULEBOOK "
        f"names, then {DEFAULT_RULEBOOK})",
    )
    sub.add_argument(
        "--rulebook", type=Path, metavar="PATH", help="the same as RULEBOOK"
    )
    sub.add_argument(
        "--config", type=Path, metavar="FILE", help="settings file (YAML): its rulebook"
    )


def rulebook_of(args: argparse.Namespace) -> Path:
    """The rulebook ``add_rulebook``'s arguments name, else the one the settings
    name (``--config``, the environment), as for ``run``; raises ``ConfigError``
    when the arguments name two."""
    given, flag = args.rulebook_file, args.rulebook
    if given is not None and flag is not None and given != flag:
        raise ConfigError(f"two rulebooks given, {given} and {flag}: give one")
    chosen: Path | None = given or flag
    return chosen or load_settings(args.config).rulebook


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGTERM or SIGINT (finish the work in flight);
    a second signal exits at once, which is safe since delivery is at-least-once.
    The previous handlers are back when the block ends.
    """
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(EXIT_INTERRUPTED)
        log.info(
            "stopping: finishing the batch in flight",
            signal=signal.Signals(signum).name,
        )
        stop.set()

    previous = {
        sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: not installed from Python
                signal.signal(sig, handler)


def write_output(path: Path | None, text: str) -> None:
    """Write ``text`` to ``path``, or to standard output when there is none."""
    if path is None:
        sys.stdout.write(text)
        return
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
