"""The ``cdc-tracker`` command line.

Exit codes (also in ``--help``): 0 done or stopped cleanly; 1 the pipeline stopped on
an error (slot lost, undecodable change, destination misconfigured); 2 bad usage,
settings or rulebook; 130 interrupted twice; 141 the output's reader went away.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from cdc_tracker import __version__, logs
from cdc_tracker.commands.common import (
    add_rulebook,
    rulebook_of,
    settings_from,
    stop_on_signals,
)
from cdc_tracker.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    CdcTrackerError,
    ConfigError,
    RulebookError,
)
from cdc_tracker.usage import Parser, UsageError, usage_error

# Subcommands living in cdc_tracker/commands/<name>.py, each with
# register(commands, add_common_options); they import their machinery lazily.
COMMAND_MODULES: tuple[str, ...] = (
    "deadletters",
    "docs",
    "doctor",
    "replay",
    "schema",
    "status",
)

_EPILOG = """\
exit codes:
  0    finished, or stopped cleanly by SIGTERM / Ctrl-C
  1    stopped on an error (slot lost, undecodable change, ...)
  2    bad usage, settings or rulebook
  130  interrupted a second time while draining
  141  the reader of the output went away (| head)

settings come from --config FILE, then the environment (CDC_TRACKER_DSN,
CDC_TRACKER_SLOT, CDC_TRACKER_RULEBOOK, RUDDERSTACK_DATA_PLANE_URL,
RUDDERSTACK_WRITE_KEY, ...), then flags; see config/settings.example.yaml.
"""

_RUN_EXAMPLES = """\
examples:
  cdc-tracker run --dsn postgresql://tracker@db/app
  cdc-tracker run --dry-run          # print the calls as JSON lines, advance nothing
  RUDDERSTACK_WRITE_KEY=... RUDDERSTACK_DATA_PLANE_URL=https://... cdc-tracker run

while running:
  SIGHUP reloads the rulebook; SIGTERM or Ctrl-C stops after the request in flight.
  /healthz, /readyz and /metrics answer on CDC_TRACKER_METRICS_ADDRESS
  (default 127.0.0.1:9187; "off" for none).
  Calls are sent by a delivery process the daemon starts and stops
  (python -P -m cdc_tracker.destination.worker); --dry-run starts none.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = _parser()
    logs.forget_format()  # an earlier command's, in the same process (tests)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return usage_error(exc, sys.argv[1:] if argv is None else list(argv), parser)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_CONFIG
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        return _report(exc, args, EXIT_CONFIG)
    except CdcTrackerError as exc:
        return _report(exc, args, EXIT_FAILED)
    except BrokenPipeError:
        # Whoever read our output has gone (`... | head`): stop as Unix tools do,
        # quietly, and without a second error when Python flushes at exit.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        _silence_stdout()
        sys.stderr.write(f"cdc-tracker: cannot write the output: {exc.strerror}\n")
        return EXIT_FAILED
    return code


# Writes that fail for want of room: said in a line, not a traceback.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _silence_stdout() -> None:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _report(exc: CdcTrackerError, args: argparse.Namespace, code: int) -> int:
    """Tell the error that ends the command; returns its exit ``code``."""
    if getattr(args, "errors_as_logs", False) and _json_logs(args):
        # Among the JSON lines of run or replay, the error that ends it is one
        # too; other commands' errors stay lines for people (and editors).
        structlog.get_logger("cdc_tracker").error(
            "stopped on an error",
            error=exc.what,
            **({"hint": exc.hint} if exc.hint else {}),
            exit_code=code,
        )
        return code
    # A rulebook's problems are "file:line: problem" lines, as editors read them.
    prefix = "" if isinstance(exc, RulebookError) else "cdc-tracker: "
    sys.stderr.write(f"{prefix}{exc}\n")
    return code


def _json_logs(args: argparse.Namespace) -> bool:
    """Whether logs are JSON lines, or were to be: an error may come before the
    settings that configure them (a bad value of another setting, a bad flag),
    and then the flag or the environment says."""
    return logs.json_lines() or logs.asked_json(getattr(args, "log_format", None))


def _parser() -> Parser:
    parser = Parser(
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
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"cdc_tracker.commands.{name}")
        module.register(commands, _common)
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
    # In any case, as the environment takes them (--log-level INFO).
    sub.add_argument(
        "--log-format", type=str.lower, choices=["auto", "console", "json"]
    )
    sub.add_argument(
        "--log-level", type=str.lower, choices=["debug", "info", "warning", "error"]
    )


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
        help="longest a window of changes stays open before shipping (default 0.2)",
    )
    sub.add_argument(
        "--dry-run",
        action="store_true",
        help="print calls as JSON lines on stdout; send and advance nothing",
    )
    sub.add_argument(
        "--recreate-slot",
        action="store_true",
        help="create the slot again after it was lost (changes since are skipped: "
        "backfill them with replay)",
    )
    # Its stderr goes to a log shipper: the error that ends it is a log line too.
    sub.set_defaults(handler=_run, errors_as_logs=True)


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
        "exit codes:\n  0    the rulebook is valid (and fits the database)\n"
        "  1    the database did not answer\n"
        "  2    problems found, each as FILE:LINE: PROBLEM, or an unusable --dsn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_rulebook(sub)
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
        epilog="exit codes:\n  0    every change of the story was shipped and "
        "acknowledged\n  1    it could not run (PostgreSQL or wal2json missing)\n"
        "  2    the rulebook cannot be read, or does not fit the example schema",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument(
        "--rulebook",
        type=Path,
        default=None,
        metavar="PATH",
        help="a rulebook to run instead of the example one; it must fit the example "
        "schema (tables public.merchants and public.payouts)",
    )
    sub.set_defaults(handler=_demo)


def _run(args: argparse.Namespace) -> int:
    from cdc_tracker.daemon.runner import run_daemon

    settings = settings_from(args, slot=args.slot, poll_interval=args.poll_interval)
    with stop_on_signals() as stop:
        run_daemon(
            settings,
            stop,
            dry_run=args.dry_run,
            recreate_slot=args.recreate_slot,
            out=sys.stdout,
        )
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from cdc_tracker.commands.check import check_rulebook

    logs.configure("auto", "warning")
    print(check_rulebook(rulebook_of(args), args.dsn))
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from cdc_tracker.demo import run_demo

    logs.configure("console" if sys.stderr.isatty() else "json", "info")
    return run_demo(args.rulebook, out=sys.stdout)
