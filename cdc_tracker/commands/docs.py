"""``cdc-tracker docs RULEBOOK``: the tracking plan as a Markdown event dictionary."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdc_tracker.commands.common import add_rulebook

_EXAMPLES = """\
examples:
  cdc-tracker docs config/rulebook.yaml -o TRACKING_PLAN.md
  cdc-tracker docs config/rulebook.yaml --dsn postgresql://tracker@db/app

Every identify rule (traits) and track rule (properties): its table and the
columns it reads, its trigger (on) and condition (when), its userId, its
integrations and description. With --dsn, each trait and property also gets its
type from the live schema. The output is deterministic: commit it and review
its diff with the rulebook's.

exit codes:
  0    written
  1    the database could not be read
  2    bad usage, or a rulebook that does not validate
"""


def register(
    commands: Any, add_common: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``docs`` to the sub-parsers."""
    sub = commands.add_parser(
        "docs",
        help="write the tracking plan (events, traits, properties) as Markdown",
        description="Write a Markdown event dictionary from a rulebook.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_rulebook(sub)
    sub.add_argument("--dsn", help="read property and trait types from this database")
    sub.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write here (default stdout)"
    )
    sub.set_defaults(handler=_docs)


def _docs(args: argparse.Namespace) -> int:
    from cdc_tracker.commands.common import rulebook_of, write_output  # noqa: PLC0415
    from cdc_tracker.rules.docs import render_plan  # noqa: PLC0415 -- keeps --help fast
    from cdc_tracker.rules.rulebook import load_rulebook  # noqa: PLC0415

    rulebook = load_rulebook(rulebook_of(args))
    catalog = None
    if args.dsn:
        from cdc_tracker.source.catalog import read_catalog  # noqa: PLC0415
        from cdc_tracker.source.slot import connect  # noqa: PLC0415

        with connect(args.dsn) as conn:
            catalog = read_catalog(conn, rulebook.schema_tables)
    text = render_plan(rulebook, catalog)
    write_output(args.output, text)
    return 0
