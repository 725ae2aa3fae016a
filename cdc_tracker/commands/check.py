"""``cdc-tracker check``: a rulebook's structure and expressions, and with a
database its fit to the live schema, without running anything."""

from __future__ import annotations

from pathlib import Path

import psycopg

from cdc_tracker.errors import RulebookError
from cdc_tracker.model import TableInfo
from cdc_tracker.replay.plan import is_cursor_type
from cdc_tracker.rules.rulebook import Rulebook, load_rulebook
from cdc_tracker.rules.schema import check_schema, sql_name
from cdc_tracker.source.catalog import read_catalog
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
            unreadable = _unreadable_lookups(conn, rulebook, catalog)
        problems = check_schema(rulebook, catalog) + unreadable
        if problems:
            raise RulebookError(sorted(problems, key=lambda problem: problem[1] or 0))
        where = "structure, expressions and the live schema"
        notes = _cursor_notes(rulebook, catalog)
    return "\n".join([f"{path}: ok ({where}): {rulebook.size}", *notes])


def _unreadable_lookups(
    conn: psycopg.Connection[tuple[object, ...]],
    rulebook: Rulebook,
    catalog: dict[str, TableInfo],
) -> list[tuple[str, int | None, str]]:
    """A lookup whose table this role may not read: every change of its rules
    would be a dead letter."""
    specs = {
        (spec.name, spec.table, spec.line): spec
        for table in rulebook.tables.values()
        for spec in table.lookups.values()
    } | {
        (spec.name, spec.table, spec.line): spec
        for rule in rulebook.rules
        for spec in rule.lookups.values()
    }
    problems: list[tuple[str, int | None, str]] = []
    for spec in sorted(specs.values(), key=lambda spec: spec.line):
        if spec.table not in catalog:
            continue  # said by check_schema
        schema, _, name = spec.table.partition(".")
        row = conn.execute(_READABLE_SQL, (schema, name)).fetchone()
        if row is None or all(row):
            continue
        select, usage = row
        fixes = [] if usage else [f"GRANT USAGE ON SCHEMA {sql_name(schema)}"]
        fixes += [] if select else [f"GRANT SELECT ON {sql_name(spec.table)}"]
        role = '"' + conn.info.user.replace('"', '""') + '"'  # as the doctor writes it
        problems.append(
            (
                str(rulebook.path),
                spec.line,
                f"lookup '{spec.name}': this role may not read {spec.table}; "
                f"fix: {' '.join(f'{fix} TO {role};' for fix in fixes)}",
            )
        )
    return problems


# Reading a table takes SELECT on it and USAGE on its schema.
_READABLE_SQL = """
SELECT has_table_privilege(c.oid, 'SELECT'), has_schema_privilege(n.oid, 'USAGE')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


def _cursor_notes(rulebook: Rulebook, catalog: dict[str, TableInfo]) -> list[str]:
    """Cursors that only ``replay`` would refuse: the daemon does not use them."""
    notes = []
    for spec in rulebook.tables.values():
        info = catalog.get(spec.name)
        declared = info.columns.get(spec.cursor or "") if info else None
        if declared is not None and not is_cursor_type(declared):
            line = spec.cursor_line or spec.line
            notes.append(
                f"{rulebook.path}:{line}: note: cursor column '{spec.cursor}' "
                f"of {spec.name} is {declared}, not a timestamp: 'replay' will "
                "refuse this table"
            )
    return notes
