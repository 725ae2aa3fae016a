"""Durable dead letters: a table in our own schema of the source database.

The table lives in schema ``cdc_tracker``, which the slot never reads (``add-tables``
names only the rulebook's tables), so writing to it does not feed back. A dead
letter is written before the slot advances past its change: none is lost.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import psycopg

from cdc_tracker.model import DeadLetter
from cdc_tracker.source.slot import translate_errors

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS cdc_tracker;
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

_INSERT_SQL = (
    "INSERT INTO cdc_tracker.dead_letters "
    "(slot, table_name, rule, reason, commit_lsn, ordinal, change, call) "
    "VALUES (%s, %s, %s, %s, %s::pg_lsn, %s, %s::jsonb, %s::jsonb)"
)


class DeadLetterStore:
    """Writes dead letters to ``cdc_tracker.dead_letters`` on its own connection."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], slot: str) -> None:
        self.conn = conn
        self.slot = slot

    def ensure_schema(self) -> None:
        with translate_errors(self.slot):
            self.conn.execute(SCHEMA_SQL)

    def save(self, letters: list[DeadLetter]) -> None:
        """Store ``letters`` durably (one transaction); raises ``SourceError``."""
        if not letters:
            return
        rows = [self._row(letter) for letter in letters]
        with (
            translate_errors(self.slot),
            self.conn.transaction(),
            self.conn.cursor() as cursor,
        ):
            cursor.executemany(_INSERT_SQL, rows)

    def _row(self, letter: DeadLetter) -> tuple[Any, ...]:
        return (
            self.slot,
            letter.table,
            letter.rule,
            letter.reason,
            str(letter.commit_lsn),
            letter.ordinal,
            _json(letter.change),
            None if letter.call is None else _json(letter.call),
        )


def _json(value: Any) -> str:
    # NUL cannot be stored in jsonb; the reason column already says what went wrong.
    return orjson.dumps(value, default=_exact).decode().replace("\\u0000", "")


def _exact(value: object) -> orjson.Fragment:
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value))
    raise TypeError(f"cannot store a value of type {type(value).__name__}")
