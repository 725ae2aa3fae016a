"""``--resume``: where an interrupted replay stopped, kept in the source database.

The state lives in ``cdc_tracker.replay_state``, beside the dead letters: it
survives the container or the machine that ran the replay (a resume may run
elsewhere), needs no writable local directory, and asks for no right the daemon
does not already need (``CREATE`` for the ``cdc_tracker`` schema). The slot never
reads that schema, so writing there is invisible to the daemon.

A job is named by the namespace and the ``--table``/``--rule`` selection; its
window (``since``, ``until``) is fixed when it starts, so a resumed ``--since 7d``
means the same seven days; a digest of the rulebook's file is kept too, so that
a resume can tell the rules changed meanwhile. A table's position is that of its
last row done: every call of it and of the rows before it acknowledged or
dead-lettered, and their dead letters stored. It is recorded after each
delivery, so resuming sends again at most the calls that were in flight, with
the same messageIds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from hashlib import blake2b
from typing import Any

from psycopg_pool import ConnectionPool

from cdc_tracker.replay.reader import Position
from cdc_tracker.replay.window import Window
from cdc_tracker.source.catalog import ensure_state_schema
from cdc_tracker.source.slot import translate_errors

TABLE = "cdc_tracker.replay_state"

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS cdc_tracker.replay_state (
    job          text PRIMARY KEY,
    selection    jsonb NOT NULL,
    since        timestamptz NOT NULL,
    until        timestamptz NOT NULL,
    positions    jsonb NOT NULL DEFAULT '{}',
    rows_done    bigint NOT NULL DEFAULT 0,
    calls        bigint NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
"""

_START_SQL = f"""
INSERT INTO {TABLE} (job, selection, since, until) VALUES (%s, %s::jsonb, %s, %s)
ON CONFLICT (job) DO UPDATE SET selection = excluded.selection,
    since = excluded.since, until = excluded.until, positions = '{{}}',
    rows_done = 0, calls = 0, started_at = now(), updated_at = now(),
    finished_at = NULL
"""

_SAVE_SQL = f"""
UPDATE {TABLE} SET positions = %s::jsonb, rows_done = %s, calls = %s,
    updated_at = now() WHERE job = %s
"""

_LOAD_SQL = f"""
SELECT since, until, positions::text, rows_done, calls, selection->>'rulebook',
    started_at FROM {TABLE}
WHERE job = %s AND finished_at IS NULL
"""


def job_id(namespace: str, tables: tuple[str, ...], rules: tuple[str, ...]) -> str:
    """The name of a replay job: its namespace and its selection."""
    material = json.dumps([namespace, sorted(tables), sorted(rules)])
    return blake2b(material.encode(), digest_size=12).hexdigest()


@dataclass(slots=True)
class JobState:
    """A job's window and, per table, the position after the last row done.

    ``finished`` holds the tables read to their end; ``rows`` counts the rows
    done and ``calls`` the calls acknowledged; ``rulebook`` is the digest of
    the rulebook the job started with, and ``started`` when (both loaded only).
    """

    job: str
    window: Window
    positions: dict[str, Position] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    rows: int = 0
    calls: int = 0
    rulebook: str | None = None
    started: datetime | None = None

    def to_json(self) -> str:
        tables: dict[str, Any] = {
            name: {"cursor": pos.cursor, "key": list(pos.key)}
            for name, pos in self.positions.items()
        }
        for name in self.finished:
            tables.setdefault(name, {})["finished"] = True
        return json.dumps(tables)


def _state(job: str, row: tuple[Any, ...]) -> JobState:
    since, until, positions, rows, calls, rulebook, started = row
    state = JobState(
        job,
        Window(since, until),
        rows=int(rows),
        calls=int(calls),
        rulebook=rulebook,
        started=started,
    )
    for name, item in json.loads(positions).items():
        if "cursor" in item:
            state.positions[name] = Position(item["cursor"], tuple(item["key"]))
        if item.get("finished"):
            state.finished.add(name)
    return state


_WAITING_SQL = f"""
SELECT selection::text, rows_done FROM {TABLE}
WHERE finished_at IS NULL ORDER BY updated_at DESC
"""


class StateStore:
    """Jobs in ``cdc_tracker.replay_state``; every method may raise ``SourceError``."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def start(self, job: str, selection: dict[str, Any], window: Window) -> JobState:
        """Begin ``job`` afresh over ``window``, forgetting any earlier progress."""
        params = (job, json.dumps(selection), window.since, window.until)
        with translate_errors(), self.pool.connection() as conn:
            ensure_state_schema(conn)
            conn.execute(SCHEMA_SQL)
            conn.execute(_START_SQL, params)
        return JobState(job, window)

    def load(self, job: str) -> JobState | None:
        """The unfinished state of ``job``, or ``None`` when there is none."""
        with translate_errors(), self.pool.connection() as conn:
            exists = conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()
            if exists is None or exists[0] is None:
                return None
            row = conn.execute(_LOAD_SQL, (job,)).fetchone()
        return None if row is None else _state(job, row)

    def waiting(self) -> list[tuple[dict[str, Any], int]]:
        """Every interrupted job, newest first: its selection (``tables`` and
        ``rules`` as named, and its ``namespace``) and the rows it sent."""
        with translate_errors(), self.pool.connection() as conn:
            exists = conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()
            if exists is None or exists[0] is None:
                return []
            rows = conn.execute(_WAITING_SQL).fetchall()
        return [(json.loads(selection), int(done)) for selection, done in rows]

    def save(self, state: JobState, *, finished: bool = False) -> None:
        """Record the state; ``finished`` closes the job (nothing left to resume)."""
        params = (state.to_json(), state.rows, state.calls, state.job)
        with translate_errors(), self.pool.connection() as conn:
            conn.execute(_SAVE_SQL, params)
            if finished:
                conn.execute(
                    f"UPDATE {TABLE} SET finished_at = now() WHERE job = %s",
                    (state.job,),
                )
