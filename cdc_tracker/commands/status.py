"""``cdc-tracker status``: the slot's position and lag, shipping and the replica."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

_EXAMPLES = """\
examples:
  cdc-tracker status --dsn postgresql://tracker@db/app
  cdc-tracker status --json | jq .lag.pending_bytes

A table on a terminal, one JSON object otherwise (--json forces it). It shows the
slot's confirmed position, the WAL it retains (current - restart_lsn) and the WAL
written since the confirmed position, an upper bound on the age of the oldest
unshipped commit, the last batch shipped, calls in the last whole minute, dead
letters waiting by reason, and the session holding the slot's lock.

exit codes:
  0    the slot exists and has the WAL it needs
  1    the slot does not exist or is invalidated, or the database failed
  2    bad usage or settings, a DSN that names no database, or a slot that is
       not cdc-tracker's
"""


def register(
    commands: Any, add_common: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``status`` to the sub-parsers."""
    sub = commands.add_parser(
        "status",
        help="show the slot's position and lag, shipping and the active replica",
        description="Show how far cdc-tracker got, and what it costs the database.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(sub)
    sub.add_argument("--slot", help="replication slot name (CDC_TRACKER_SLOT)")
    sub.add_argument("--json", action="store_true", help="JSON even on a terminal")
    sub.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from cdc_tracker.commands.common import settings_from  # noqa: PLC0415
    from cdc_tracker.ops import status  # noqa: PLC0415 -- keeps --help fast
    from cdc_tracker.source.slot import connect  # noqa: PLC0415

    settings = settings_from(args, quiet=True, slot=args.slot)
    with connect(settings.require_dsn()) as conn:
        conn.execute("SET application_name = 'cdc-tracker status'")
        found = status.read_status(conn, settings.slot)
    as_json = args.json or not sys.stdout.isatty()
    render = status.render_json if as_json else status.render_table
    sys.stdout.write(render(found) + "\n")
    return 0 if found.healthy else 1
