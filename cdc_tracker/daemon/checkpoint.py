"""The last shipped commit, kept in our own schema of the source database.

The slot itself says how far it was advanced, but not when that commit happened,
and it says nothing once dropped. The checkpoint remembers both, so that a lost
slot is reported with what to backfill (``replay --since`` the commit time), and a
missing slot is recreated only when the operator asks for it.

The same row keeps what ``cdc-tracker status`` shows: calls and batches shipped in
total and in the last two clock minutes, and when the daemon was last caught up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from cdc_tracker.model import Lsn
from cdc_tracker.source.catalog import ensure_state_schema, has_column
from cdc_tracker.source.slot import translate_errors

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS cdc_tracker.checkpoints (
    slot         text PRIMARY KEY,
    commit_lsn   pg_lsn NOT NULL,
    commit_time  timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
"""

# Added after the first release, for ``cdc-tracker status``.
_UPGRADE_SQL = """
ALTER TABLE cdc_tracker.checkpoints
    ADD COLUMN IF NOT EXISTS calls_total bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS batches_total bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS minute_at timestamptz,
    ADD COLUMN IF NOT EXISTS minute_calls bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS previous_minute_calls bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS caught_up_at timestamptz;
"""

# Calls are counted per clock minute (UTC): the minute being filled and the one
# before it, so that status can show the last whole minute.
_SAVE_SQL = """
INSERT INTO cdc_tracker.checkpoints AS c
    (slot, commit_lsn, commit_time, calls_total, batches_total, minute_at,
     minute_calls)
VALUES (%(slot)s, %(lsn)s::pg_lsn, %(time)s, %(calls)s, %(batches)s,
        date_trunc('minute', now()), %(calls)s)
ON CONFLICT (slot) DO UPDATE
SET commit_lsn = excluded.commit_lsn, commit_time = excluded.commit_time,
    updated_at = now(),
    calls_total = c.calls_total + excluded.calls_total,
    batches_total = c.batches_total + excluded.batches_total,
    previous_minute_calls = CASE
        WHEN c.minute_at = excluded.minute_at THEN c.previous_minute_calls
        WHEN c.minute_at = excluded.minute_at - interval '1 minute'
            THEN c.minute_calls
        ELSE 0 END,
    minute_calls = CASE
        WHEN c.minute_at = excluded.minute_at
            THEN c.minute_calls + excluded.minute_calls
        ELSE excluded.minute_calls END,
    minute_at = excluded.minute_at
"""

CAUGHT_UP_EVERY = 15.0  # seconds between two caught-up marks
# A row's cursor holds when it was written (now() is when its transaction began),
# so a transaction still open at the last shipped commit, and committed after it,
# has rows stamped before it: the backfill of a lost slot starts this much earlier.
RECOVERY_MARGIN = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The end of the last transaction whose calls were all acknowledged."""

    commit_lsn: Lsn
    commit_time: datetime

    def describe(self) -> str:
        return f"commit {self.commit_lsn} at {self.commit_time.isoformat()}"

    def recovery_hint(self) -> str:
        """What to run when the slot that was read up to here is gone."""
        since = (self.commit_time - RECOVERY_MARGIN).isoformat()
        return (
            "recreate the slot with 'cdc-tracker run --recreate-slot', then backfill "
            f"with 'cdc-tracker replay --since {since}' (an hour before that "
            "commit: a row's cursor is set before its transaction commits)"
        )


class CheckpointStore:
    """Reads and writes the checkpoint of one slot."""

    def __init__(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        slot: str,
        *,
        caught_up_every: float = CAUGHT_UP_EVERY,
    ) -> None:
        self.conn = conn
        self.slot = slot
        self.caught_up_every = caught_up_every
        self._caught_up_marked = -float("inf")

    def ensure_schema(self) -> None:
        """Create the table, or bring one made by an older version up to date."""
        with translate_errors(self.slot):
            ensure_state_schema(self.conn)
            self.conn.execute(SCHEMA_SQL)
            if not has_column(self.conn, "cdc_tracker.checkpoints", "caught_up_at"):
                self.conn.execute(_UPGRADE_SQL)

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

    def save(self, checkpoint: Checkpoint, *, calls: int = 0, batches: int = 0) -> None:
        """Record the checkpoint, adding ``calls`` and ``batches`` shipped since the
        previous save to the totals (and to the current minute's calls)."""
        params = {
            "slot": self.slot,
            "lsn": str(checkpoint.commit_lsn),
            "time": checkpoint.commit_time,
            "calls": calls,
            "batches": batches,
        }
        with translate_errors(self.slot):
            self.conn.execute(_SAVE_SQL, params)

    def mark_caught_up(self) -> bool:
        """Note that every commit up to now was handled; returns whether it wrote.

        Writes at most once per ``caught_up_every`` seconds (each write is WAL the
        slot reads past), and only once a checkpoint row exists.
        """
        now = time.monotonic()
        if now - self._caught_up_marked < self.caught_up_every:
            return False
        with translate_errors(self.slot):
            self.conn.execute(
                "UPDATE cdc_tracker.checkpoints SET caught_up_at = now() "
                "WHERE slot = %s",
                (self.slot,),
            )
        self._caught_up_marked = now
        return True

    def forget(self) -> None:
        with translate_errors(self.slot):
            self.conn.execute(
                "DELETE FROM cdc_tracker.checkpoints WHERE slot = %s", (self.slot,)
            )
