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
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

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
    except _UsageError as exc:
        return _usage_error(exc, sys.argv[1:] if argv is None else list(argv), parser)
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
    return logs.json_lines() or _json_asked(getattr(args, "log_format", None))


def _json_asked(flag: str | None) -> bool:
    """Whether ``--log-format`` (``flag``), else the environment, asks for JSON
    lines; if so, the logs are configured for them."""
    asked = flag or os.environ.get("CDC_TRACKER_LOG_FORMAT", "")
    if asked.lower() != "json":  # as the settings read it: JSON, not " json"
        return False
    logs.configure("json", "info")
    return True


class _UsageError(Exception):
    """A command line argparse refused (a bad flag or value)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """argparse's, its usage errors raised for ``main`` to tell (see
    ``_usage_error``) instead of printed on the spot; one with commands (or
    actions) knows their parsers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: Mapping[str, argparse.ArgumentParser] = {}

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        self.commands = action.choices  # filled as the commands are added
        return action

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


# The commands whose stderr goes to a log shipper: with JSON logs asked for,
# even a usage error is a JSON line.
_LOGGING_COMMANDS = frozenset({"run", "replay"})


def _usage_error(exc: _UsageError, argv: list[str], top: _Parser) -> int:
    """Tell a usage error as argparse does, with the usage of the command it
    concerns, or as a JSON line when ``run`` or ``replay`` was to log JSON lines
    (``--log-format json``, as argparse reads it, or the environment).

    A line asking for help (``-h`` where argparse stopped before it) gets the
    help of the command it concerns instead, and exit code 0, as ``-h`` does.
    """
    from cdc_tracker.source.connection import redact  # a DSN's password, masked

    asked = _without_help(argv)
    parser, message, hint = _concerned(exc, asked, top)
    if asked != argv:
        parser.print_help()
        return EXIT_OK
    message, hint = redact(message), hint and redact(hint)
    command = parser.prog.split(" ")[1] if " " in parser.prog else ""
    if command in _LOGGING_COMMANDS and _json_asked(_log_format_flag(argv)):
        structlog.get_logger("cdc_tracker").error(
            "bad usage",
            error=message,
            usage=" ".join(parser.format_usage().split()),
            hint=hint or f"see '{parser.prog} --help'",
            exit_code=EXIT_CONFIG,
        )
    else:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{parser.prog}: error: {message}\n")
        if hint:
            sys.stderr.write(f"{parser.prog}: hint: {hint}\n")
    return EXIT_CONFIG


def _without_help(argv: list[str]) -> list[str]:
    """``argv`` without the words asking for help: ``-h``, and ``--help`` or an
    abbreviation of it as argparse takes them; after ``--`` they are arguments."""
    end = argv.index("--") if "--" in argv else len(argv)
    return [
        arg
        for arg in argv[:end]
        if arg != "-h" and not (len(arg) > 2 and "--help".startswith(arg))
    ] + argv[end:]


def _concerned(
    exc: _UsageError, argv: list[str], top: _Parser
) -> tuple[argparse.ArgumentParser, str, str | None]:
    """The parser ``argv``'s usage error concerns, the error and a hint."""
    lines = [[*commands, *options] for commands, options in _placings(top, argv)]
    if lines[0] != argv:
        # Options before a command or action: what they would have meant after it.
        return _options_first(lines, top)
    if exc.parser is top and argv and argv[0] in top.commands:
        return _named(top, argv), exc.message, None  # a command's unknown flag
    return exc.parser, exc.message, None


def _placings(
    parser: argparse.ArgumentParser, argv: list[str]
) -> Iterator[tuple[list[str], list[str]]]:
    """The ways to read ``argv`` as commands (and actions) then their options,
    most likely first; only ``argv`` itself when no option comes before a command.

    At each level where options come first, each word naming a command is tried
    as the command, the words before it moved right after the innermost action
    (``--json deadletters list`` and ``deadletters --json list`` are both
    ``deadletters list --json``), keeping their order and staying before ``--``;
    words that follow an option (``--slot run``: maybe its value) are tried last.
    """
    commands = parser.commands if isinstance(parser, _Parser) else {}
    indexes = [0] if argv and argv[0] in commands else []
    if argv and argv[0].startswith("-") and argv[0] != "--":
        indexes = [i for i, arg in enumerate(argv) if arg in commands]
        indexes.sort(
            key=lambda i: argv[i - 1].startswith("-") and "=" not in argv[i - 1]
        )
    if not indexes:
        yield [], argv
    for index in indexes:
        for named, options in _placings(commands[argv[index]], argv[index + 1 :]):
            yield [argv[index], *named], [*argv[:index], *options]


def _named(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The innermost command (or action) ``argv`` names under ``parser``."""
    while isinstance(parser, _Parser) and parser.commands:
        index = next((i for i, arg in enumerate(argv) if arg in parser.commands), -1)
        if index < 0:
            break
        parser, argv = parser.commands[argv[index]], argv[index + 1 :]
    return parser


_AFTER_IT = "a command's options come after it"


def _options_first(
    lines: list[list[str]], top: _Parser
) -> tuple[argparse.ArgumentParser, str, str | None]:
    """For options given before a command (or action): the parser, error and
    hint to tell. The first of ``lines`` (see ``_placings``) that parses is
    suggested; else the first one tells its own error."""
    refusals: list[tuple[list[str], _UsageError]] = []
    for line in lines:
        try:
            top.parse_args(line)
        except _UsageError as error:
            refusals.append((line, error))
            continue
        return _named(top, line), _AFTER_IT, f"cdc-tracker {shlex.join(line)}"
    line, refused = refusals[0]
    parser = refused.parser if refused.parser is not top else _named(top, line)
    return parser, refused.message, _AFTER_IT


def _log_format_flag(argv: list[str]) -> str | None:
    """The value of ``--log-format`` in ``argv``, read as argparse would (it
    stopped before it did): the last one, under any unambiguous abbreviation."""
    value = None
    for index, arg in enumerate(argv):
        name, equals, given = arg.partition("=")
        if len(name) <= len("--log-") or not "--log-format".startswith(name):
            continue
        if equals:
            value = given
        elif index + 1 < len(argv):
            value = argv[index + 1]
    return value


def _parser() -> _Parser:
    parser = _Parser(
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
