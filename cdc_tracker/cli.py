"""The ``cdc-tracker`` command line.

Exit codes (also in ``--help``): 0 done or stopped cleanly; 1 the pipeline stopped on
an error (slot lost, undecodable change, destination misconfigured); 2 bad usage,
settings or rulebook; 130 interrupted twice.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from cdc_tracker import __version__, logs
from cdc_tracker.errors import CdcTrackerError, ConfigError
from cdc_tracker.settings import Settings, load_settings

log = structlog.get_logger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130

_EPILOG = """\
exit codes:
  0    finished, or stopped cleanly by SIGTERM / Ctrl-C
  1    stopped on an error (slot lost, undecodable change, ...)
  2    bad usage, settings or rulebook
  130  interrupted a second time while draining

settings come from --config FILE, then the environment (CDC_TRACKER_DSN,
CDC_TRACKER_SLOT, CDC_TRACKER_RULEBOOK, RUDDERSTACK_DATA_PLANE_URL,
RUDDERSTACK_WRITE_KEY, ...), then flags; see config/settings.example.yaml.
"""

_RUN_EXAMPLES = """\
examples:
  cdc-tracker run --dsn postgresql://tracker@db/app
  cdc-tracker run --dry-run          # print the calls as JSON lines, advance nothing
  RUDDERSTACK_WRITE_KEY=... RUDDERSTACK_DATA_PLANE_URL=https://... cdc-tracker run
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_CONFIG
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        _report(exc)
        return EXIT_CONFIG
    except CdcTrackerError as exc:
        _report(exc)
        return EXIT_FAILED
    return code


def _report(exc: CdcTrackerError) -> None:
    sys.stderr.write(f"cdc-tracker: {exc}\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdc-tracker",
        description=(
            "Turn PostgreSQL row changes into RudderStack/Segment identify and "
            "track calls, by a YAML rulebook."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"cdc-tracker {__version__}"
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_run(commands)
    _add_check(commands)
    _add_demo(commands)
    return parser


def _common(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--config", type=Path, metavar="FILE", help="settings file (YAML)")
    sub.add_argument("--dsn", help="database to read (CDC_TRACKER_DSN)")
    sub.add_argument(
        "--rulebook",
        type=Path,
        metavar="PATH",
        help="rulebook file (CDC_TRACKER_RULEBOOK, default config/rulebook.yaml)",
    )
    sub.add_argument("--log-format", choices=["auto", "console", "json"])
    sub.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _add_run(commands: Any) -> None:
    sub = commands.add_parser(
        "run",
        help="run the daemon",
        description="Read the slot, map changes through the rulebook, ship the calls.",
        epilog=_RUN_EXAMPLES + "\n" + _EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(sub)
    sub.add_argument(
        "--slot", help="replication slot name (CDC_TRACKER_SLOT, default cdc_tracker)"
    )
    sub.add_argument(
        "--poll-interval",
        type=float,
        metavar="SECONDS",
        help="wait between polls when idle (default 1)",
    )
    sub.add_argument(
        "--dry-run",
        action="store_true",
        help="print calls as JSON lines on stdout; send and advance nothing",
    )
    sub.set_defaults(handler=_run)


def _add_check(commands: Any) -> None:
    sub = commands.add_parser(
        "check",
        help="validate a rulebook without running",
        description=(
            "Validate a rulebook: structure, expressions, keys. With --dsn, also the "
            "tables, columns, types and replica identity in the live database."
        ),
        epilog="examples:\n  cdc-tracker check config/rulebook.yaml\n"
        "  cdc-tracker check config/rulebook.yaml --dsn postgresql://tracker@db/app\n\n"
        + _EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("rulebook_file", type=Path, metavar="RULEBOOK")
    sub.add_argument("--dsn", help="also check against this database")
    sub.set_defaults(handler=_check)


def _add_demo(commands: Any) -> None:
    sub = commands.add_parser(
        "demo",
        help="run the whole pipeline on a throwaway Postgres and a local receiver",
        description=(
            "Start a throwaway PostgreSQL with wal2json, create the example schema, "
            "run the daemon with the example rulebook against a local "
            "RudderStack-compatible receiver, play a short story and print each call "
            "as it arrives."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("--rulebook", type=Path, default=None, metavar="PATH")
    sub.set_defaults(handler=_demo)


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    flags = {
        "dsn": getattr(args, "dsn", None),
        "rulebook": getattr(args, "rulebook", None),
        "log_format": getattr(args, "log_format", None),
        "log_level": getattr(args, "log_level", None),
        **extra,
    }
    settings = load_settings(getattr(args, "config", None), overrides=flags)
    logs.configure(settings.log_format, settings.log_level)
    return settings


def _run(args: argparse.Namespace) -> int:
    from cdc_tracker.runner import run_daemon

    settings = _settings(args, slot=args.slot, poll_interval=args.poll_interval)
    stop = threading.Event()
    _install_signal_handlers(stop)
    run_daemon(settings, stop, dry_run=args.dry_run, out=sys.stdout)
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from cdc_tracker.runner import check_rulebook

    logs.configure("auto", "warning")
    print(check_rulebook(args.rulebook_file, args.dsn))
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from cdc_tracker.demo import run_demo

    logs.configure("console" if sys.stderr.isatty() else "json", "info")
    return run_demo(args.rulebook)


def _install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT drains and advances; a second exits at once."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(EXIT_INTERRUPTED)  # safe: delivery is at-least-once
        log.info(
            "stopping: finishing the batch in flight",
            signal=signal.Signals(signum).name,
        )
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
