"""Keyset pages of one table in (cursor, primary key) order, values as text.

Every value comes back as the text the server's output function prints, in the
session settings the slot's connection uses: the same text wal2json writes, so
that ``changes`` can rebuild the very values the live path sees. Each page is one
short query (no long transaction, no snapshot held between pages) that resumes
after the last row of the previous page.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import pq, sql
from psycopg.adapt import AdaptersMap
from psycopg_pool import ConnectionPool

from cdc_tracker.model import TableInfo
from cdc_tracker.source.connection import SESSION_SETTINGS, connect_timeout
from cdc_tracker.source.slot import translate_errors

Row = tuple[str | None, ...]

_TEXT_OID = 25
_TEXT_LOADER = psycopg.adapters.get_loader(_TEXT_OID, pq.Format.TEXT)

_OIDS_SQL = """
SELECT a.attname, a.atttypid::int
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
"""

_INDEXED_SQL = """
SELECT EXISTS (
  SELECT 1 FROM pg_index i
  JOIN pg_class c ON c.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
  WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s)
"""


def configure(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Give a pooled connection the session settings values are printed in: the
    daemon's, so that a replayed value is written as the live one."""
    for statement in SESSION_SETTINGS:
        conn.execute(statement)


def open_pool(dsn: str) -> ConnectionPool:
    """A small pool: one connection reads pages, one writes state and letters."""
    return ConnectionPool(
        dsn,
        min_size=1,
        max_size=2,
        kwargs={
            "autocommit": True,
            "application_name": "cdc-tracker replay",
            "connect_timeout": connect_timeout(dsn),
        },
        configure=configure,
        name="cdc-tracker-replay",
        open=False,
    )


@dataclass(frozen=True, slots=True)
class Position:
    """Where a table's pages stopped: the last row's cursor and key, as text."""

    cursor: str
    key: tuple[str, ...]


def _as_text(adapters: AdaptersMap) -> None:
    assert _TEXT_LOADER is not None
    for info in adapters.types:
        for oid in (info.oid, info.array_oid):
            if oid:
                adapters.register_loader(oid, _TEXT_LOADER)


class TableReader:
    """Reads one table's rows in a window, a page at a time, on a pooled connection.

    Bounds and positions are passed as untyped text: the server reads them as the
    column's own type. Every method raises ``SourceError`` when the database fails.
    """

    def __init__(
        self, pool: ConnectionPool, info: TableInfo, cursor: str, page_rows: int
    ) -> None:
        self.pool = pool
        self.info = info
        self.cursor = cursor
        self.page_rows = page_rows
        self.columns = list(info.columns)
        self._order = [self.columns.index(name) for name in (cursor, *info.key)]
        self._schema, _, self._name = info.name.partition(".")
        table = sql.Identifier(self._schema, self._name)
        order = sql.SQL(", ").join(map(sql.Identifier, (cursor, *info.key)))
        in_window = sql.SQL("{c} >= %s AND {c} < %s").format(c=sql.Identifier(cursor))
        self._count = sql.SQL("SELECT count(*) FROM {t} WHERE {w}").format(
            t=table, w=in_window
        )
        self._count_null = sql.SQL("SELECT count(*) FROM {t} WHERE {c} IS NULL").format(
            t=table, c=sql.Identifier(cursor)
        )
        head = sql.SQL("SELECT {cols} FROM {t} WHERE {w}").format(
            cols=sql.SQL(", ").join(map(sql.Identifier, self.columns)),
            t=table,
            w=in_window,
        )
        tail = sql.SQL(" ORDER BY {o} LIMIT %s").format(o=order)
        after = sql.SQL(" AND ({o}) > ({p})").format(
            o=order, p=sql.SQL(", ").join([sql.Placeholder()] * len(self._order))
        )
        self._first = head + tail
        self._next = head + after + tail
        self._count_after = self._count + after

    def type_oids(self) -> dict[str, int]:
        """Each column's type oid as wal2json sees it (a domain's own, not its base)."""
        with translate_errors(), self.pool.connection() as conn:
            rows = conn.execute(_OIDS_SQL, (self._schema, self._name)).fetchall()
        return {str(name): int(str(oid)) for name, oid in rows}

    def cursor_indexed(self) -> bool:
        """Whether an index leads with the cursor column (else each page scans)."""
        params = (self._schema, self._name, self.cursor)
        with translate_errors(), self.pool.connection() as conn:
            row = conn.execute(_INDEXED_SQL, params).fetchone()
        return bool(row and row[0])

    def count(self, since: str, until: str, after: Position | None = None) -> int:
        """How many rows the window holds right now (past ``after``, if given)."""
        query, params = self._count, [since, until]
        if after is not None:
            query, params = self._count_after, [*params, after.cursor, *after.key]
        with translate_errors(), self.pool.connection() as conn:
            row = conn.execute(query, params).fetchone()
        return int(str(row[0])) if row else 0

    def count_without_cursor(self) -> int:
        """How many rows have a NULL cursor: they are in no window."""
        with translate_errors(), self.pool.connection() as conn:
            row = conn.execute(self._count_null).fetchone()
        return int(str(row[0])) if row else 0

    def pages(
        self, since: str, until: str, after: Position | None = None
    ) -> Iterator[list[Row]]:
        """Pages of at most ``page_rows`` rows after ``after``, in page order."""
        while True:
            page = self._page(since, until, after)
            if page:
                yield page
            if len(page) < self.page_rows:
                return
            after = self.position(page[-1])

    def position(self, row: Row) -> Position:
        """The position just after ``row``."""
        cursor, *key = (str(row[index]) for index in self._order)
        return Position(cursor, tuple(key))

    def _page(self, since: str, until: str, after: Position | None) -> list[Row]:
        if after is None:
            query, params = self._first, [since, until, self.page_rows]
        else:
            params = [since, until, after.cursor, *after.key, self.page_rows]
            query = self._next
        with translate_errors(), self.pool.connection() as conn:
            cur = conn.cursor()
            _as_text(cur.adapters)
            rows: list[Row] = cur.execute(query, params).fetchall()
        return rows
