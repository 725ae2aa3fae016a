"""What the live database says about the tracked tables: columns, key, identity."""

from __future__ import annotations

import psycopg

from cdc_tracker.model import TableInfo
from cdc_tracker.source.slot import translate_errors

_COLUMNS_SQL = """
SELECT n.nspname || '.' || c.relname, c.relreplident, a.attname,
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod)
            ELSE format_type(a.atttypid, a.atttypmod) END,
       EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = c.oid AND i.indisprimary AND i.indimmediate
                 AND a.attnum = ANY (i.indkey)),
       c.relkind = 'p'
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname || '.' || c.relname = ANY (%s) AND c.relkind IN ('r', 'p')
ORDER BY 1, a.attnum
"""

_IDENTITY = {"d": "default", "f": "full", "i": "index", "n": "nothing"}


def read_catalog(
    conn: psycopg.Connection[tuple[object, ...]], tables: list[str]
) -> dict[str, TableInfo]:
    """Describe the given ``schema.table`` names; absent tables are left out."""
    found: dict[str, TableInfo] = {}
    with translate_errors("-"):
        rows = conn.execute(_COLUMNS_SQL, (tables,)).fetchall()
    for table, identity, column, declared, in_key, partitioned in rows:
        info = found.setdefault(
            str(table),
            TableInfo(
                str(table),
                _IDENTITY[str(identity)],
                {},
                (),
                partitioned=bool(partitioned),
            ),
        )
        info.columns[str(column)] = str(declared)
        if in_key:
            info.key = (*info.key, str(column))
    return found
