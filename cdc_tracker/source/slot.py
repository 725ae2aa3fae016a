"""The replication slot, read through the SQL interface (peek, then advance).

Every psycopg error is translated at the boundary by ``source.connection`` into
the source branch of ``cdc_tracker.errors``. Nothing is consumed by reading: the
slot moves only when ``advance`` is called, after the destination acknowledged the
calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import structlog

from cdc_tracker.errors import ConfigError, SlotLost
from cdc_tracker.model import Lsn
from cdc_tracker.source.connection import (
    connect,
    lock_key,
    translate_errors,
    try_advisory_lock,
)
from cdc_tracker.source.wal2json import MESSAGE_PREFIX, PLUGIN_OPTIONS

# connect and translate_errors live in source.connection; kept here for callers.
__all__ = [
    "LOCK_CLASS",
    "Slot",
    "SlotState",
    "connect",
    "slot_lock_id",
    "translate_errors",
]

log = structlog.get_logger(__name__)

_PEEK_SQL = (
    "SELECT data FROM pg_logical_slot_peek_changes(%s, %s::pg_lsn, %s, "
    + ", ".join(["%s"] * (len(PLUGIN_OPTIONS) + 4))
    + ")"
)
_SLOT_SQL = (
    "SELECT plugin, database, confirmed_flush_lsn::text, wal_status, "
    "pg_current_wal_flush_lsn()::text, current_database() "
    "FROM pg_replication_slots WHERE slot_name = %s"
)


@dataclass(frozen=True, slots=True)
class SlotState:
    """What the server says about the slot right now."""

    confirmed: Lsn
    flush: Lsn
    wal_status: str | None


class Slot:
    """One logical slot on one database, using one connection."""

    def __init__(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        name: str,
        tables: list[str],
    ) -> None:
        self.conn = conn
        self.name = name
        self.tables = tables
        self.confirmed = Lsn(0)

    def ensure(self, *, create: bool = True, temporary: bool = False) -> SlotState:
        """Check the slot (plugin, database, health), creating it on first run.

        A ``temporary`` slot lives as long as this session (``run --dry-run``).
        """
        with translate_errors(self.name):
            row = self.conn.execute(_SLOT_SQL, (self.name,)).fetchone()
            if row is None:
                if not create:
                    raise SlotLost(f"replication slot '{self.name}' does not exist")
                self._create(temporary)
                row = self.conn.execute(_SLOT_SQL, (self.name,)).fetchone()
                assert row is not None
        plugin, database, confirmed, wal_status, flush, current = row
        if plugin is None:
            raise ConfigError(
                f"replication slot '{self.name}' is a physical slot, not wal2json",
                hint="choose another slot name with CDC_TRACKER_SLOT",
            )
        if plugin != "wal2json":
            raise ConfigError(
                f"replication slot '{self.name}' uses plugin '{plugin}', not wal2json",
                hint="choose another slot name with CDC_TRACKER_SLOT",
            )
        if database != current:
            raise ConfigError(
                f"replication slot '{self.name}' belongs to database '{database}', "
                f"not '{current}'"
            )
        if wal_status == "lost":
            raise SlotLost(
                f"replication slot '{self.name}' is invalidated (wal_status = lost)",
                hint="drop and recreate it, then 'cdc-tracker replay --since'",
            )
        self.confirmed = Lsn.parse(str(confirmed))
        return SlotState(self.confirmed, Lsn.parse(str(flush)), str(wal_status))

    def exists(self) -> bool:
        """Whether the slot exists on the server."""
        with translate_errors(self.name):
            row = self.conn.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.name,)
            ).fetchone()
        return row is not None

    def _create(self, temporary: bool) -> None:
        # Creation waits for every transaction holding an xid: bound the wait.
        with self.conn.transaction():
            self.conn.execute("SET LOCAL lock_timeout = '30s'")
            self.conn.execute("SET LOCAL statement_timeout = '60s'")
            self.conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'wal2json', %s)",
                (self.name, temporary),
            )
        log.info("replication slot created", slot=self.name, temporary=temporary)

    def flush_lsn(self) -> Lsn:
        """The server's WAL flush position: every commit below it is decodable."""
        with translate_errors(self.name):
            row = self.conn.execute(
                "SELECT pg_current_wal_flush_lsn()::text"
            ).fetchone()
        assert row is not None
        return Lsn.parse(str(row[0]))

    @contextmanager
    def peek(self, upto: Lsn, max_changes: int, fetch: int) -> Iterator[Iterator[str]]:
        """Yield the wal2json rows committed up to ``upto``, through a cursor.

        The server stops after the transaction that reaches ``max_changes`` rows
        (it never splits one), so a window may hold more rows than asked; the
        cursor keeps only ``fetch`` of them in our memory at a time.
        """
        params = (
            self.name,
            str(upto),
            max_changes,
            *PLUGIN_OPTIONS,
            "add-tables",
            add_tables(self.tables),
            "add-msg-prefixes",
            MESSAGE_PREFIX,
        )
        with translate_errors(self.name), self.conn.transaction():
            cursor = self.conn.cursor(name="cdc_tracker_peek")
            try:
                cursor.execute(_PEEK_SQL, params)
                yield _rows(cursor, fetch, self.name)
            finally:
                cursor.close()

    def advance(self, lsn: Lsn) -> bool:
        """Move the slot to ``lsn``; a position at or behind it is left alone."""
        if lsn <= self.confirmed:
            return False
        with translate_errors(self.name):
            self.conn.execute(
                "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                (self.name, str(lsn)),
            )
        self.confirmed = lsn
        return True

    def try_lock(self) -> bool:
        """Take the session advisory lock that makes this process the one reader."""
        with translate_errors(self.name):
            return try_advisory_lock(self.conn, LOCK_CLASS, slot_lock_id(self.name))


LOCK_CLASS = 0x0CDC


def slot_lock_id(slot: str) -> int:
    """A stable 32-bit advisory-lock key for a slot name."""
    return lock_key(slot)


def _rows(
    cursor: psycopg.ServerCursor[tuple[object, ...]], fetch: int, slot: str
) -> Iterator[str]:
    with translate_errors(slot):
        while batch := cursor.fetchmany(fetch):
            for (data,) in batch:
                yield str(data)


def add_tables(tables: list[str]) -> str:
    """wal2json's ``add-tables`` value: ``schema.table`` pairs, special characters
    (space, quote, comma, period, asterisk, backslash) escaped with a backslash."""
    return ",".join(
        f"{_escape(schema)}.{_escape(table)}"
        for schema, _, table in (name.partition(".") for name in tables)
    )


def _escape(part: str) -> str:
    return _SPECIAL.sub(r"\\\g<0>", part)


_SPECIAL = re.compile(r"[ ',.*\\]")
