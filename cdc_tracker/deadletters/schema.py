"""The dead-letter table and its upgrades, in schema ``cdc_tracker``.

``ensure`` makes the table as this version uses it; ``upgrade`` brings a table
made by an older version up to date, keeping the letters it holds. Both run once
per process and are safe to run again.
"""

from __future__ import annotations

import psycopg

from cdc_tracker.source.catalog import ensure_state_schema, has_column

TABLE = "cdc_tracker.dead_letters"

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS cdc_tracker.dead_letters (
    id          bigserial PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    slot        text NOT NULL,
    table_name  text NOT NULL,
    rule        text,
    reason      text NOT NULL,
    commit_lsn  pg_lsn NOT NULL,
    ordinal     integer NOT NULL,
    change      jsonb NOT NULL,
    call        jsonb
);
"""

# Added after the first release: a retry counts its attempts on the letter.
_ATTEMPTS_SQL = """
ALTER TABLE cdc_tracker.dead_letters
    ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS last_attempt_at timestamptz;
"""

# A letter is stored once: a crash after storing it and before the slot moved
# makes the change read, and its letter made, again. A replay's letters have no
# position (0/0) and are not kept apart by it.
_ONCE_INDEX = "dead_letters_once"
_ONCE_SQL = f"""
DELETE FROM cdc_tracker.dead_letters AS later
    USING cdc_tracker.dead_letters AS first
    WHERE later.slot = first.slot AND later.commit_lsn = first.commit_lsn
      AND later.ordinal = first.ordinal AND later.rule = first.rule
      AND later.commit_lsn <> '0/0' AND later.id > first.id;
CREATE UNIQUE INDEX IF NOT EXISTS {_ONCE_INDEX}
    ON cdc_tracker.dead_letters (slot, commit_lsn, ordinal, rule)
    WHERE commit_lsn <> '0/0';
"""

# The two-key advisory lock space is apart from the slot's (one bigint key).
_SCHEMA_LOCK_CLASS = 0x63647363  # "cdsc"


def ensure(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Create the table unless it is there, and upgrade it (autocommit ``conn``)."""
    ensure_state_schema(conn)
    conn.execute(SCHEMA_SQL)
    upgrade(conn)


def upgrade(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Bring a table made by an older version up to date (autocommit ``conn``)."""
    if not has_column(conn, TABLE, "last_attempt_at"):
        conn.execute(_ATTEMPTS_SQL)
    if not _has_index(conn, _ONCE_INDEX):
        # One process at a time: a daemon and a replay may start together.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_SCHEMA_LOCK_CLASS,))
            conn.execute(_ONCE_SQL)


def _has_index(conn: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"cdc_tracker.{name}",)
    ).fetchone()
    return bool(row and row[0])
