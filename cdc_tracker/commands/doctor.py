"""``cdc-tracker doctor``: check the database, the rulebook and the destination."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

_EXAMPLES = """\
examples:
  cdc-tracker doctor --dsn postgresql://tracker@db/app
  cdc-tracker doctor --config config/settings.yaml --json

each check prints 'pass|warn|fail  NAME  DETAIL', and under a warning or a
failure the fix. It creates and drops a temporary replication slot to probe
wal2json, and tests the write key with an empty batch (never an event).

exit codes:
  0    every check passed
  1    warnings only
  2    at least one failure (or unusable settings)
"""


def register(
    commands: Any, add_common: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``doctor`` to the sub-parsers."""
    sub = commands.add_parser(
        "doctor",
        help="check that the database, rulebook and destination are ready",
        description=(
            "A preflight against the live database and destination: server "
            "version, wal_level, wal2json, privileges, slot headroom and health, "
            "the rulebook's fit to the schema, and the write key."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(sub)
    sub.add_argument("--slot", help="replication slot name (CDC_TRACKER_SLOT)")
    sub.add_argument("--json", action="store_true", help="one JSON object on stdout")
    sub.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from cdc_tracker.commands.common import settings_from  # noqa: PLC0415
    from cdc_tracker.ops import doctor  # noqa: PLC0415 -- keeps --help fast

    settings = settings_from(args, quiet=True, slot=args.slot)
    findings = doctor.run_doctor(settings)
    render = doctor.render_json if args.json else doctor.render_text
    sys.stdout.write(render(findings) + "\n")
    return doctor.exit_code(findings)
