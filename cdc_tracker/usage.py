"""Usage errors of the command line: told as argparse tells them, with the usage of
the command they concern and, for options given before their command, the line
they meant; as a JSON line where ``run`` or ``replay`` was to log JSON lines."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import structlog

from cdc_tracker import logs
from cdc_tracker.errors import EXIT_CONFIG, EXIT_OK


class UsageError(Exception):
    """A command line argparse refused (a bad flag or value)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class Parser(argparse.ArgumentParser):
    """argparse's, its usage errors raised for ``main`` to tell (see
    ``usage_error``) instead of printed on the spot; one with commands (or
    actions) knows their parsers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: Mapping[str, argparse.ArgumentParser] = {}

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        self.commands = action.choices  # filled as the commands are added
        return action

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


# The commands whose stderr goes to a log shipper: with JSON logs asked for,
# even a usage error is a JSON line.
_LOGGING_COMMANDS = frozenset({"run", "replay"})


def usage_error(exc: UsageError, argv: list[str], top: Parser) -> int:
    """Tell a usage error as argparse does, with the usage of the command it
    concerns, or as a JSON line when ``run`` or ``replay`` was to log JSON lines
    (``--log-format json``, as argparse reads it, or the environment).

    A line asking for help (``-h`` where argparse stopped before it) gets the
    help of the command it concerns instead, and exit code 0, as ``-h`` does.
    """
    # A DSN's password, masked; imported here, as psycopg with it, only when needed.
    from cdc_tracker.source.connection import redact

    asked = _without_help(argv)
    parser, message, hint = _concerned(exc, asked, top)
    if asked != argv:
        parser.print_help()
        return EXIT_OK
    message, hint = redact(message), hint and redact(hint)
    command = parser.prog.split(" ")[1] if " " in parser.prog else ""
    if command in _LOGGING_COMMANDS and logs.asked_json(_log_format_flag(argv)):
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
    exc: UsageError, argv: list[str], top: Parser
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
    commands = parser.commands if isinstance(parser, Parser) else {}
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
    while isinstance(parser, Parser) and parser.commands:
        index = next((i for i, arg in enumerate(argv) if arg in parser.commands), -1)
        if index < 0:
            break
        parser, argv = parser.commands[argv[index]], argv[index + 1 :]
    return parser


_AFTER_IT = "a command's options come after it"


def _options_first(
    lines: list[list[str]], top: Parser
) -> tuple[argparse.ArgumentParser, str, str | None]:
    """For options given before a command (or action): the parser, error and
    hint to tell. The first of ``lines`` (see ``_placings``) that parses is
    suggested; else the first one tells its own error."""
    refusals: list[tuple[list[str], UsageError]] = []
    for line in lines:
        try:
            top.parse_args(line)
        except UsageError as error:
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
