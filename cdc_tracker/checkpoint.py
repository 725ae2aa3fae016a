"""The last shipped commit, kept in our own schema of the source database.

The slot itself says how far it was advanced, but not when that commit happened,
and it says nothing once dropped. The checkpoint remembers both, so that a lost
slot is reported with what to backfill (``replay --since`` the commit time), and a
missing slot is recreated only when the operator asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from cdc_tracker.model import Lsn
from cdc_tracker.source.slot import translate_errors

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS cdc_tracker;
CREATE TABLE IF NOT EXISTS cdc_tracker.checkpoints (
    slot         text PRIMARY KEY,
    commit_lsn   pg_lsn NOT NULL,
    commit_time  timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
"""

_SAVE_SQL = """
INSERT INTO cdc_tracker.checkpoints (slot, commit_lsn, commit_time)
VALUES (%s, %s::pg_lsn, %s)
ON CONFLICT (slot) DO UPDATE
SET commit_lsn = excluded.commit_lsn, commit_time = excluded.commit_time,
    updated_at = now()
"""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The end of the last transaction whose calls were all acknowledged."""

    commit_lsn: Lsn
    commit_time: datetime

    def describe(self) -> str:
        return f"commit {self.commit_lsn} at {self.commit_time.isoformat()}"


class CheckpointStore:
    """Reads and writes the checkpoint of one slot."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], slot: str) -> None:
        self.conn = conn
        self.slot = slot

    def ensure_schema(self) -> None:
        with translate_errors(self.slot):
            self.conn.execute(SCHEMA_SQL)

    def load(self) -> Checkpoint | None:
        with translate_errors(self.slot):
            row = self.conn.execute(
                "SELECT commit_lsn::text, commit_time FROM cdc_tracker.checkpoints "
                "WHERE slot = %s",
                (self.slot,),
            ).fetchone()
        if row is None:
            return None
        lsn, commit_time = row
        assert isinstance(commit_time, datetime)
        return Checkpoint(Lsn.parse(str(lsn)), commit_time)

    def save(self, checkpoint: Checkpoint) -> None:
        with translate_errors(self.slot):
            self.conn.execute(
                _SAVE_SQL,
                (self.slot, str(checkpoint.commit_lsn), checkpoint.commit_time),
            )

    def forget(self) -> None:
        with translate_errors(self.slot):
            self.conn.execute(
                "DELETE FROM cdc_tracker.checkpoints WHERE slot = %s", (self.slot,)
            )
