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

# A replay meets the same rows every time it runs, with no position to tell them
# by: its letter is named by what it holds instead, its call's messageId (a
# refused call) or its row's key values (a row no rule could map), and stored
# once per slot, table and rule under that name. A letter without one (no key
# kept) is stored as it comes. The expression reads the stored jsonb, so an
# upgrade names the letters already there exactly as new ones are named.
REPLAY_KEY = """CASE
    WHEN {call} IS NOT NULL THEN CASE
        WHEN jsonb_typeof({call}->'messageId') = 'string'
        THEN jsonb_build_object('messageId', {call}->'messageId') END
    WHEN jsonb_typeof({change}->'key') = 'array'
        AND jsonb_array_length({change}->'key') > 0
        AND jsonb_typeof({change}->'new') = 'object'
    THEN jsonb_build_object('key', (
        SELECT jsonb_agg({change}->'new'->column_name ORDER BY place)
        FROM jsonb_array_elements_text({change}->'key')
            WITH ORDINALITY AS keyed (column_name, place)))
END"""

_REPLAY_INDEX = "dead_letters_replay_once"
# Letters stored twice before: the first keeps its id, and takes the latest's
# reason and payload (what the last replay found).
_REPLAY_SQL = f"""
ALTER TABLE cdc_tracker.dead_letters ADD COLUMN IF NOT EXISTS replay_key jsonb;
UPDATE cdc_tracker.dead_letters
    SET replay_key = {REPLAY_KEY.format(call="call", change="change")}
    WHERE commit_lsn = '0/0' AND rule IS NOT NULL AND replay_key IS NULL;
WITH twins AS (
    SELECT id, first_value(id) OVER named AS first_id,
        last_value(id) OVER named AS last_id
    FROM cdc_tracker.dead_letters WHERE replay_key IS NOT NULL
    WINDOW named AS (
        PARTITION BY slot, table_name, rule, replay_key ORDER BY id
        ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
), merged AS (
    UPDATE cdc_tracker.dead_letters AS kept
        SET reason = latest.reason, ordinal = latest.ordinal,
            change = latest.change, call = latest.call
        FROM twins, cdc_tracker.dead_letters AS latest
        WHERE kept.id = twins.id AND twins.id = twins.first_id
          AND latest.id = twins.last_id AND twins.first_id <> twins.last_id
)
DELETE FROM cdc_tracker.dead_letters AS later
    USING twins WHERE later.id = twins.id AND twins.id <> twins.first_id;
CREATE UNIQUE INDEX IF NOT EXISTS {_REPLAY_INDEX}
    ON cdc_tracker.dead_letters (slot, table_name, rule, replay_key)
    WHERE replay_key IS NOT NULL;
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
    if not _has_index(conn, _REPLAY_INDEX):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_SCHEMA_LOCK_CLASS,))
            conn.execute(_REPLAY_SQL)


def _has_index(conn: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"cdc_tracker.{name}",)
    ).fetchone()
    return bool(row and row[0])
