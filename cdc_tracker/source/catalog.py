"""What the live database says about the tracked tables: columns, key, identity."""

from __future__ import annotations

from typing import NamedTuple

import psycopg

from cdc_tracker.model import TableInfo, old_key_of
from cdc_tracker.source.slot import translate_errors

_COLUMNS_SQL = """
SELECT n.nspname || '.' || c.relname, c.relreplident, a.attname,
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod)
            ELSE format_type(a.atttypid, a.atttypmod) END,
       EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = c.oid AND i.indisprimary AND i.indimmediate
                 AND a.attnum = ANY (KEY_COLUMNS)),
       c.relkind = 'p',
       EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = c.oid AND i.indisreplident
                 AND a.attnum = ANY (KEY_COLUMNS))
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname || '.' || c.relname = ANY (%s) AND c.relkind IN ('r', 'p')
ORDER BY 1, a.attnum
"""

_IDENTITY = {"d": "default", "f": "full", "i": "index", "n": "nothing"}

# The leaf partitions of a partitioned table, with their replica identity and the
# columns of their primary key and of their identity index.
_LEAVES_SQL = """
SELECT n.nspname || '.' || c.relname, c.relreplident,
       ARRAY(SELECT a.attname FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (KEY_COLUMNS)
             WHERE i.indrelid = c.oid AND i.indisprimary AND i.indimmediate),
       ARRAY(SELECT a.attname FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (KEY_COLUMNS)
             WHERE i.indrelid = c.oid AND i.indisreplident)
FROM pg_partition_tree(%s::regclass) t
JOIN pg_class c ON c.oid = t.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.isleaf
ORDER BY 1
"""
# An index's key columns, without its INCLUDE ones: only those are logged as the
# old key.
_KEYS = "(i.indkey::int2[])[0:i.indnkeyatts - 1]"
_COLUMNS_SQL = _COLUMNS_SQL.replace("KEY_COLUMNS", _KEYS)
_LEAVES_SQL = _LEAVES_SQL.replace("KEY_COLUMNS", _KEYS)
# From the weakest replica identity to the strongest, to name a partitioned
# table's by its weakest leaf's.
_STRENGTH = ("nothing", "default", "index", "full")


def read_catalog(
    conn: psycopg.Connection[tuple[object, ...]], tables: list[str]
) -> dict[str, TableInfo]:
    """Describe the given ``schema.table`` names; absent tables are left out."""
    found: dict[str, TableInfo] = {}
    with translate_errors():
        rows = conn.execute(_COLUMNS_SQL, (tables,)).fetchall()
    for table, identity, column, declared, in_key, partitioned, in_index in rows:
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
        if in_index:
            info.identity_index = (*info.identity_index, str(column))
    for info in found.values():
        if info.partitioned:
            _read_leaves(conn, info)
    return found


def _read_leaves(conn: psycopg.Connection[tuple[object, ...]], info: TableInfo) -> None:
    """wal2json names a partitioned table's changes by leaf: list the leaves, name
    the table's replica identity by its weakest leaf's, and take as its old key
    the columns every leaf's old image carries."""
    schema, _, table = info.name.partition(".")
    qualified = f'"{schema}"."{table}"'
    with translate_errors():
        rows = conn.execute(_LEAVES_SQL, (qualified,)).fetchall()
    info.leaves = tuple(str(leaf) for leaf, *_ in rows)
    if not rows:
        return
    identities = [_IDENTITY[str(identity)] for _, identity, _, _ in rows]
    info.replica_identity = min(identities, key=_STRENGTH.index)
    columns = tuple(info.columns)
    info.leaf_keys = {
        str(leaf): old_key_of(identity, columns, _names(key), _names(index))
        for (leaf, _, key, index), identity in zip(rows, identities, strict=True)
    }


def _names(array: object) -> tuple[str, ...]:
    assert isinstance(array, list)
    return tuple(str(name) for name in array)


def source_tables(tables: list[str], catalog: dict[str, TableInfo]) -> dict[str, str]:
    """The names wal2json gives changes of ``tables``, mapped to the tracked name:
    a partitioned table's leaves stand for it."""
    names: dict[str, str] = {}
    for table in tables:
        info = catalog.get(table)
        for leaf in info.leaves if info is not None and info.partitioned else ():
            names[leaf] = table
        names.setdefault(table, table)
    return names


def has_column(
    conn: psycopg.Connection[tuple[object, ...]], table: str, column: str
) -> bool:
    """Whether ``table`` (``schema.name``) has ``column``: an upgrade that adds it
    runs only when it is missing, since ALTER TABLE needs the table's owner."""
    schema, _, name = table.partition(".")
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s AND column_name = %s)",
        (schema, name, column),
    ).fetchone()
    return bool(row and row[0])


def ensure_state_schema(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Create the ``cdc_tracker`` schema of our own state, unless it is there:
    even ``IF NOT EXISTS`` needs CREATE on the database, which a role given only
    the schema (as the doctor advises) does not have."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'cdc_tracker')"
    ).fetchone()
    if not (row and row[0]):
        conn.execute("CREATE SCHEMA IF NOT EXISTS cdc_tracker")


class TableAccess(NamedTuple):
    """Whether the role may read a table: SELECT on it and USAGE on its schema
    (both needed), with their names as SQL for the grants that fix it."""

    table: str  # schema.name, as the rulebook names it
    sql_table: str
    sql_schema: str
    select: bool
    usage: bool

    @property
    def readable(self) -> bool:
        return self.select and self.usage

    def grants(self, role: str) -> str:
        """The statements giving ``role`` (as SQL) what it lacks to read the table."""
        fixes = [] if self.usage else [f"GRANT USAGE ON SCHEMA {self.sql_schema}"]
        fixes += [] if self.select else [f"GRANT SELECT ON {self.sql_table}"]
        return " ".join(f"{fix} TO {role};" for fix in fixes)


def role_sql(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    """The connection's role as an SQL identifier, for the grants it lacks."""
    return '"' + conn.info.user.replace('"', '""') + '"'


_ACCESS_SQL = """
SELECT n.nspname || '.' || c.relname, format('%%I.%%I', n.nspname, c.relname),
       format('%%I', n.nspname),
       has_table_privilege(current_user, c.oid, 'SELECT'),
       has_schema_privilege(current_user, n.oid, 'USAGE')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname || '.' || c.relname = ANY (%s) AND c.relkind IN ('r', 'p')
ORDER BY 2
"""


def table_access(
    conn: psycopg.Connection[tuple[object, ...]], tables: list[str]
) -> list[TableAccess]:
    """What the role may do with the given ``schema.table`` names, ordered by
    their SQL names; absent tables are left out. The catalog is read directly:
    naming a table of a schema the role may not use would fail."""
    with translate_errors():
        rows = conn.execute(_ACCESS_SQL, (tables,)).fetchall()
    return [
        TableAccess(str(table), str(sql_table), str(schema), bool(select), bool(usage))
        for table, sql_table, schema, select, usage in rows
    ]
