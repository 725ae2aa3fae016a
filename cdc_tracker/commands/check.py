"""``cdc-tracker check``: a rulebook's structure and expressions, and with a
database its fit to the live schema, without running anything."""

from __future__ import annotations

from pathlib import Path

from cdc_tracker.errors import RulebookError
from cdc_tracker.mapping.lookups import unreadable_lookups
from cdc_tracker.model import TableInfo
from cdc_tracker.replay.plan import is_cursor_type
from cdc_tracker.rules.rulebook import Rulebook, load_rulebook
from cdc_tracker.rules.schema import check_schema
from cdc_tracker.source.catalog import (
    TableAccess,
    read_catalog,
    role_sql,
    table_access,
)
from cdc_tracker.source.slot import connect


def check_rulebook(path: Path, dsn: str | None) -> str:
    """Validate a rulebook (and, with ``dsn``, its fit to the database).

    Returns a one-line summary, then a note per table ``replay`` would refuse;
    raises ``RulebookError`` listing every problem.
    """
    rulebook = load_rulebook(path)
    where = "structure and expressions"
    notes: list[str] = []
    if dsn:
        with connect(dsn) as conn:
            catalog = read_catalog(conn, rulebook.schema_tables)
            unreadable = unreadable_lookups(conn, rulebook, catalog)
            access = {row.table: row for row in table_access(conn, sorted(catalog))}
            role = role_sql(conn)
        problems = check_schema(rulebook, catalog) + unreadable
        if problems:
            raise RulebookError(sorted(problems, key=lambda problem: problem[1] or 0))
        where = "structure, expressions and the live schema"
        notes = _replay_notes(rulebook, catalog, access, role)
    return "\n".join([f"{path}: ok ({where}): {rulebook.size}", *notes])


def _replay_notes(
    rulebook: Rulebook,
    catalog: dict[str, TableInfo],
    access: dict[str, TableAccess],
    role: str,
) -> list[str]:
    """Tables only ``replay`` would refuse (one the role may not read, a cursor
    that is no timestamp, no primary key to page by): the daemon, which reads
    changes from the slot, does not need any of these."""
    notes = []
    for spec in rulebook.tables.values():
        info = catalog.get(spec.name)
        if info is None:
            continue
        found = access.get(spec.name)
        if found is not None and not found.readable:
            notes.append(
                f"{rulebook.path}:{spec.line}: note: this role may not read "
                f"{spec.name}: 'replay' will refuse this table; fix: "
                f"{found.grants(role)}"
            )
        declared = info.columns.get(spec.cursor or "")
        if declared is not None and not is_cursor_type(declared):
            line = spec.cursor_line or spec.line
            notes.append(
                f"{rulebook.path}:{line}: note: cursor column '{spec.cursor}' "
                f"of {spec.name} is {declared}, not a timestamp: 'replay' will "
                "refuse this table"
            )
        if not info.key:
            notes.append(
                f"{rulebook.path}:{spec.line}: note: {spec.name} has no primary "
                "key: 'replay' will refuse this table (it pages by one), and its "
                "insert calls are named by WAL position"
            )
    return notes
