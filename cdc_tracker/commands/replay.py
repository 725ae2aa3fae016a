"""``cdc-tracker replay``: backfill the calls the rulebook makes for existing rows."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from cdc_tracker.errors import ConfigError

_DESCRIPTION = """\
Send the calls the rulebook would have made for the rows whose cursor column
(per table, 'cursor:' in the rulebook, e.g. updated_at) lies in
[--since, --until). Each row is taken as it is now, as if just inserted.

Which rules run: identify rules, and track rules that fire on insert, when they
read only the new row. Skipped, and listed with the reason at run time: rules
that fire only on update or delete, and rules that read the old row (old.x,
changed(x)): a snapshot of a table holds no history to derive them from.

Each call's timestamp is the row's cursor value. Insert-triggered track calls
carry the messageId the live daemon gives the same row, so replaying a window the
daemon already shipped sends no event twice (not on a table with 'insert_ids:
position': its live ids come from WAL positions, so replayed events get ids of
their own). An identify sends the row as it is now: its id carries its traits,
so it is sent once more, and again only when they changed. No replication slot
is read or moved: it is safe beside a running daemon. Rows are read in pages
ordered by (cursor, primary key); an index on them keeps each page cheap.
"""

# --rate bounds: slower than a call a minute or faster than any destination
# takes is a typo, not a plan.
MIN_RATE = 0.01
MAX_RATE = 1_000_000

_EPILOG = """\
examples:
  cdc-tracker replay --since 2026-11-01
  cdc-tracker replay --since 7d --table public.payouts --dry-run
  cdc-tracker replay --since 2026-11-01 --until 2026-11-08 --rate 200
  cdc-tracker replay --since 30d --rule 'Merchant Installed'
  cdc-tracker replay --resume        # after Ctrl-C; same --table/--rule

exit codes:
  0    every row of the window was replayed
  1    stopped on an error (database, destination); --resume continues
  2    bad usage, settings or rulebook: no cursor, cursor not a timestamp,
       a table without primary key, --since in the future, unknown --table
       or --rule, an interrupted replay of the selection waiting (--resume
       or --discard-interrupted), nothing to resume
  130  interrupted (Ctrl-C, SIGTERM): --resume continues where it stopped
"""


def register(
    commands: Any, add_common: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``replay`` to the sub-commands."""
    sub = commands.add_parser(
        "replay",
        help="backfill: send the calls the rulebook makes for existing rows",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(sub)
    sub.add_argument(
        "--since", metavar="TIME", help="ISO 8601 time (naive is UTC) or age: 7d, 12h"
    )
    sub.add_argument("--until", metavar="TIME", help="end of the window (default now)")
    sub.add_argument(
        "--table", action="append", default=[], help="only this table (repeatable)"
    )
    sub.add_argument(
        "--rule", action="append", default=[], help="only this rule id (repeatable)"
    )
    sub.add_argument(
        "--dry-run", action="store_true", help="print the calls as JSON lines only"
    )
    sub.add_argument(
        "--rate",
        type=float,
        metavar="CALLS",
        help="at most CALLS calls per second (a dry run is not paced)",
    )
    sub.add_argument(
        "--resume", action="store_true", help="continue the interrupted replay"
    )
    sub.add_argument(
        "--discard-interrupted",
        action="store_true",
        help="start anew although a replay of the same selection was interrupted "
        "(the rest of its window is then not sent)",
    )
    sub.add_argument(
        "--page-rows", type=int, default=5_000, metavar="N", help="rows per page"
    )
    sub.add_argument("--slot", help="namespace of the messageIds, and dead letters")
    sub.set_defaults(handler=_replay, errors_as_logs=True)  # see cli._run's


def _replay(args: argparse.Namespace) -> int:
    from cdc_tracker import logs  # noqa: PLC0415 -- keep --help fast
    from cdc_tracker.commands.common import (  # noqa: PLC0415
        settings_from,
        stop_on_signals,
    )
    from cdc_tracker.replay.main import run_replay  # noqa: PLC0415
    from cdc_tracker.replay.runner import ReplayOptions  # noqa: PLC0415
    from cdc_tracker.rules.names import qualify  # noqa: PLC0415

    if args.rate is not None and not MIN_RATE <= args.rate <= MAX_RATE:
        raise ConfigError(
            f"--rate is {args.rate}; expected calls per second from {MIN_RATE} "
            f"to {MAX_RATE:,}"
        )
    if args.resume and args.discard_interrupted:
        raise ConfigError("--resume and --discard-interrupted contradict each other")
    if args.page_rows < 1:
        raise ConfigError(f"--page-rows is {args.page_rows}; expected 1 or more")
    settings = settings_from(args, slot=args.slot)
    options = ReplayOptions(
        since=args.since,
        until=args.until,
        # Said twice or as public.x, a table is still the same selection.
        tables=tuple(dict.fromkeys(qualify(table) for table in args.table)),
        rules=tuple(dict.fromkeys(args.rule)),
        dry_run=args.dry_run,
        rate=args.rate,
        resume=args.resume,
        discard_interrupted=args.discard_interrupted,
        page_rows=args.page_rows,
    )
    with stop_on_signals() as stop:
        return run_replay(
            settings,
            options,
            stop,
            out=sys.stdout,
            err=sys.stderr,
            lines_as_logs=logs.json_lines(),
        )
