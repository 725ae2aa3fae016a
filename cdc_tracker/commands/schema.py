"""``cdc-tracker schema``: the rulebook's JSON Schema, for editors."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

_EXAMPLES = """\
examples:
  cdc-tracker schema -o rulebook.schema.json
  # then, as the first line of the rulebook (YAML language server):
  # yaml-language-server: $schema=./rulebook.schema.json

The schema (JSON Schema draft 2020-12) checks the rulebook's shape: keys,
required values and their types. Expressions, table references, unique rule
ids and the live database are checked by `cdc-tracker check`.

exit codes:
  0    written
  2    bad usage
"""


def register(
    commands: Any, add_common: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``schema`` to the sub-parsers."""
    sub = commands.add_parser(
        "schema",
        help="print the rulebook's JSON Schema, for editor completion and checks",
        description="Print a JSON Schema (draft 2020-12) of the rulebook.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write here (default stdout)"
    )
    sub.set_defaults(handler=_schema)


def _schema(args: argparse.Namespace) -> int:
    from cdc_tracker.commands.common import write_output  # noqa: PLC0415
    from cdc_tracker.rules.json_schema import rulebook_schema  # noqa: PLC0415

    text = json.dumps(rulebook_schema(), indent=2, ensure_ascii=False) + "\n"
    write_output(args.output, text)
    return 0
