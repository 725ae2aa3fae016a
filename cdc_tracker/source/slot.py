"""The replication slot as SQL sees it: created, checked, locked.

Its changes are read by ``source.stream``. Every psycopg error is translated at the
boundary by ``source.connection`` into the source branch of ``cdc_tracker.errors``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import structlog

from cdc_tracker.errors import ConfigError, SlotBusy, SlotLost
from cdc_tracker.model import Lsn
from cdc_tracker.source.connection import (
    connect,
    lock_key,
    translate_errors,
    try_advisory_lock,
)

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
    ) -> None:
        self.conn = conn
        self.name = name

    def ensure(
        self, *, create: bool = True, stop: threading.Event | None = None
    ) -> SlotState:
        """Check the slot (plugin, database, health), creating it on first run;
        ``stop`` cancels a creation still waiting for open transactions."""
        with translate_errors(self.name):
            row = self.conn.execute(_SLOT_SQL, (self.name,)).fetchone()
            if row is None:
                if not create:
                    raise SlotLost(f"replication slot '{self.name}' does not exist")
                self._create(stop)
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
                hint="recreate it with 'cdc-tracker run --recreate-slot', then "
                "backfill with 'cdc-tracker replay --since'",
            )
        return SlotState(
            Lsn.parse(str(confirmed)), Lsn.parse(str(flush)), str(wal_status)
        )

    def drop_if_invalidated(self) -> bool:
        """Drop the slot when the server invalidated it (the WAL it needed is
        gone, so it can never be read again); returns whether it did."""
        with translate_errors(self.name):
            row = self.conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s AND wal_status = 'lost'",
                (self.name,),
            ).fetchone()
        if row is not None:
            log.warning("invalidated replication slot dropped", slot=self.name)
        return row is not None

    def exists(self) -> bool:
        """Whether the slot exists on the server."""
        with translate_errors(self.name):
            row = self.conn.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.name,)
            ).fetchone()
        return row is not None

    def _create(self, stop: threading.Event | None) -> None:
        # Creation waits for every transaction holding an xid: bound the wait.
        with _cancelled_by(stop, self.conn), self.conn.transaction():
            self.conn.execute("SET LOCAL lock_timeout = '30s'")
            self.conn.execute("SET LOCAL statement_timeout = '60s'")
            self.conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'wal2json')",
                (self.name,),
            )
        log.info("replication slot created", slot=self.name)

    def flush_lsn(self) -> Lsn:
        """The server's WAL flush position: every commit below it is decodable."""
        with translate_errors(self.name):
            row = self.conn.execute(
                "SELECT pg_current_wal_flush_lsn()::text"
            ).fetchone()
        assert row is not None
        return Lsn.parse(str(row[0]))

    def advance(self, lsn: Lsn) -> None:
        """Move the slot to ``lsn`` through SQL, while no stream holds it; a
        position at or behind the slot's, or a slot in use, is left alone (the
        stream confirms it when it is open again)."""
        try:
            with translate_errors(self.name):
                self.conn.execute(
                    "SELECT pg_replication_slot_advance(slot_name, %s::pg_lsn) "
                    "FROM pg_replication_slots "
                    "WHERE slot_name = %s AND confirmed_flush_lsn < %s::pg_lsn "
                    "AND active_pid IS NULL",
                    (str(lsn), self.name, str(lsn)),
                )
        except SlotBusy:
            pass  # its stream has not quite let go yet

    def try_lock(self) -> bool:
        """Take the session advisory lock that makes this process the one reader."""
        with translate_errors(self.name):
            return try_advisory_lock(self.conn, LOCK_CLASS, slot_lock_id(self.name))


LOCK_CLASS = 0x0CDC


def slot_lock_id(slot: str) -> int:
    """A stable 32-bit advisory-lock key for a slot name."""
    return lock_key(slot)


@contextmanager
def _cancelled_by(
    stop: threading.Event | None, conn: psycopg.Connection[tuple[object, ...]]
) -> Iterator[None]:
    """Cancel what ``conn`` runs meanwhile once ``stop`` is set: a signal does not
    interrupt a statement psycopg is waiting on."""
    if stop is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            if stop.is_set():
                conn.cancel_safe()
                return

    watcher = threading.Thread(target=watch, name="cdc-tracker-cancel", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
