"""``cdc-tracker deadletters``: list, show, retry or purge dead letters."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from cdc_tracker.commands.common import settings_from, stop_on_signals
from cdc_tracker.errors import EXIT_CONFIG, ConfigError

_EXAMPLES = """\
examples:
  cdc-tracker deadletters list                  # oldest first, no row values
  cdc-tracker deadletters list --rule 'identify public.merchants' --json
  cdc-tracker deadletters show 42               # the stored change, values included
  cdc-tracker deadletters retry --all --dry-run # the calls today's rulebook makes
  cdc-tracker deadletters retry 42 43           # deliver; delivered letters go away
  cdc-tracker deadletters purge --before 30d --yes
"""

_RETRY_EXIT = """\
retry exits 0 when every selected letter was delivered (or no longer makes a
call) and removed, 1 when some stay dead (with their new reason) or were not
acknowledged within --timeout (the letters after them are not tried), 130 when
Ctrl-C or SIGTERM stopped it (the letters not acknowledged stay as they were).
"""

_EPILOG = """\
exit codes:
  0    done
  1    an error (the database cannot be reached, no dead-letter table
       exists yet, ...); for retry, also: some letters stay dead
  2    bad usage or settings
  130  interrupted

settings come from --config FILE, then the environment (CDC_TRACKER_DSN,
CDC_TRACKER_SLOT, ...), then flags; see config/settings.example.yaml.
"""


def register(
    commands: Any, add_common: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``deadletters`` and its actions to the sub-parsers."""
    sub = commands.add_parser(
        "deadletters",
        help="list, show, retry or purge dead letters",
        description=(
            "Inspect and cure the changes the daemon could not map or deliver, "
            "kept per slot in cdc_tracker.dead_letters of the source database."
        ),
        epilog=_EXAMPLES + "\n" + _EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.set_defaults(handler=lambda _args: _print_help(sub))
    actions = sub.add_subparsers(title="actions", metavar="ACTION")
    listing = _letters_action(
        actions, add_common, "list", "list dead letters and count them"
    )
    _letters_filters(listing)
    listing.add_argument(
        "--limit", type=int, default=100, metavar="N", help="at most N (0: all)"
    )
    listing.add_argument("--json", action="store_true", help="JSON lines on stdout")
    listing.set_defaults(handler=_list)
    show = _letters_action(
        actions, add_common, "show", "show one dead letter with its values"
    )
    show.add_argument("id", type=int, metavar="ID")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(handler=_show)
    retry = _letters_action(
        actions,
        add_common,
        "retry",
        "map again with the current rulebook and deliver",
        _RETRY_EXIT,
    )
    retry.add_argument("ids", type=int, nargs="*", metavar="ID")
    retry.add_argument("--all", action="store_true", help="every letter of the slot")
    _letters_filters(retry)
    retry.add_argument("--dry-run", action="store_true", help="print the calls only")
    retry.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up a delivery not acknowledged within SECONDS; its letters "
        "are kept as they were (default 60)",
    )
    retry.set_defaults(handler=_retry)
    purge = _letters_action(actions, add_common, "purge", "delete dead letters")
    purge.add_argument("ids", type=int, nargs="*", metavar="ID")
    purge.add_argument("--all", action="store_true", help="every letter of the slot")
    purge.add_argument(
        "--before", metavar="TIME", help="stored before TIME (2026-01-31, or 7d ago)"
    )
    purge.add_argument("--yes", action="store_true", help="do not ask")
    purge.set_defaults(handler=_purge)


def _letters_action(
    actions: Any,
    add_common: Callable[[argparse.ArgumentParser], None],
    name: str,
    summary: str,
    exits: str = "",
) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = actions.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=_EXAMPLES + "\n" + exits + "\n" + _EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(sub)
    sub.add_argument("--slot", help="whose dead letters (CDC_TRACKER_SLOT)")
    return sub


def _letters_filters(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--table", metavar="TABLE", help="only this table")
    sub.add_argument("--rule", metavar="RULE", help="only this rule id")


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_CONFIG


def _list(args: argparse.Namespace) -> int:
    from cdc_tracker.deadletters import operations as letters  # noqa: PLC0415

    if args.limit < 0:
        raise ConfigError(f"--limit is {args.limit}; expected 0 (all) or more")
    settings = settings_from(args, slot=args.slot)
    chosen = letters.selection([], args.table, args.rule)
    return letters.list_letters(
        settings,
        chosen,
        limit=args.limit,
        as_json=args.json,
        out=sys.stdout,
        err=sys.stderr,
    )


def _show(args: argparse.Namespace) -> int:
    from cdc_tracker.deadletters import operations as letters  # noqa: PLC0415

    settings = settings_from(args, slot=args.slot)
    return letters.show_letter(settings, args.id, as_json=args.json, out=sys.stdout)


def _retry(args: argparse.Namespace) -> int:
    from cdc_tracker.deadletters import operations as letters  # noqa: PLC0415

    if args.all and (args.ids or args.table or args.rule):
        raise ConfigError("--all takes no IDs, --table or --rule: say one or the other")
    if not args.all and not (args.ids or args.table or args.rule):
        raise ConfigError(
            "say which dead letters to retry: IDs, --table or --rule, or else --all"
        )
    settings = settings_from(args, slot=args.slot)
    chosen = letters.selection(args.ids, args.table, args.rule)
    with stop_on_signals() as stop:
        return letters.retry_letters(
            settings,
            chosen,
            dry_run=args.dry_run,
            stop=stop,
            timeout=args.timeout,
            out=sys.stdout,
            err=sys.stderr,
        )


def _purge(args: argparse.Namespace) -> int:
    from cdc_tracker.deadletters import operations as letters  # noqa: PLC0415

    chosen_by = [bool(args.ids), args.all, args.before is not None].count(True)
    if chosen_by > 1:
        raise ConfigError("say one of IDs, --all or --before, not several")
    if chosen_by == 0:
        raise ConfigError("say which dead letters to purge: IDs, --all or --before")
    settings = settings_from(args, slot=args.slot)
    chosen = letters.selection(args.ids, before=args.before)
    return letters.purge_letters(
        settings, chosen, yes=args.yes, stdin=sys.stdin, err=sys.stderr, out=sys.stdout
    )
