"""Durable dead letters: a table in our own schema of the source database.

The table lives in schema ``cdc_tracker``, which the slot never reads (``add-tables``
names only the rulebook's tables), so writing to it does not feed back. A dead
letter is written before the slot advances past its change: none is lost.

``DeadLetterStore`` writes them (the daemon) and reads, updates and deletes them
(``cdc-tracker deadletters``), always within its own slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import psycopg

from cdc_tracker.deadletters import schema
from cdc_tracker.deadletters.schema import REPLAY_KEY, TABLE
from cdc_tracker.destination.encode import (
    NUMERIC_MAX_INTEGER_DIGITS,
    NUMERIC_MAX_SCALE,
    exact_number,
    widen_big_ints,
)
from cdc_tracker.errors import CdcTrackerError, SourceError
from cdc_tracker.exact_json import loads
from cdc_tracker.model import NO_POSITION, DeadLetter, Lsn
from cdc_tracker.source.slot import translate_errors

_INSERT_SQL = (
    "INSERT INTO cdc_tracker.dead_letters "
    "(slot, table_name, rule, reason, commit_lsn, ordinal, change, call) "
    "VALUES (%s, %s, %s, %s, %s::pg_lsn, %s, %s::jsonb, %s::jsonb) "
    "ON CONFLICT (slot, commit_lsn, ordinal, rule) WHERE commit_lsn <> '0/0' "
    "DO NOTHING"
)

# A replay's letter replaces the one an earlier replay stored for the same row
# or call (see ``schema.REPLAY_KEY``): its reason and payload are the latest, its
# id, creation time and attempts stay.
_REPLAY_INSERT_SQL = f"""
INSERT INTO cdc_tracker.dead_letters
    (slot, table_name, rule, reason, commit_lsn, ordinal, change, call, replay_key)
SELECT v.slot, v.table_name, v.rule, v.reason, v.commit_lsn, v.ordinal, v.change,
    v.call, CASE WHEN v.rule IS NOT NULL THEN
        {REPLAY_KEY.format(call="v.call", change="v.change")} END
FROM (VALUES (%s::text, %s::text, %s::text, %s::text, %s::pg_lsn, %s::integer,
    %s::jsonb, %s::jsonb))
    AS v (slot, table_name, rule, reason, commit_lsn, ordinal, change, call)
ON CONFLICT (slot, table_name, rule, replay_key) WHERE replay_key IS NOT NULL
DO UPDATE SET reason = excluded.reason, ordinal = excluded.ordinal,
    change = excluded.change, call = excluded.call
"""

_SELECT_SQL = (
    "SELECT id, created_at, slot, table_name, rule, reason, commit_lsn::text, "
    "ordinal, attempts, last_attempt_at, call IS NOT NULL, {payload} "
    "FROM cdc_tracker.dead_letters WHERE {where} ORDER BY id{limit}"
)

# Set in a stored change or call whose values had to change to be stored: what
# changed. A retry refuses to send such a letter, which is no longer what was made.
ALTERED = "cdc_tracker_altered"
# The places of the numbers stored as text (jsonb would not keep them as written),
# made numbers again when the letter is read.
NUMBERS_AS_TEXT = "cdc_tracker_numbers_as_text"

# The two-key advisory lock space is apart from the slot's (one bigint key).
_RETRY_LOCK_CLASS = 0x63647472  # "cdtr"

# An escaped NUL (\u0000) that is not itself the tail of an escaped backslash.
_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


@dataclass(slots=True)
class StoredLetter:
    """A dead letter as stored: its row id, bookkeeping and the letter itself.

    ``letter.change`` and ``letter.call`` are only filled when read with payloads
    (``DeadLetterStore.fetch(..., payloads=True)``); ``from_delivery`` says whether
    the letter holds a call refused at delivery (resent as is on a retry).
    """

    id: int
    created_at: datetime
    slot: str
    letter: DeadLetter
    attempts: int
    last_attempt_at: datetime | None
    from_delivery: bool

    @property
    def position(self) -> str:
        """Where the slot read its change (``commit_lsn#ordinal``), or ``replay``
        for a letter a replay stored: it has no position, and its row number
        changes with every replay."""
        if self.letter.commit_lsn == NO_POSITION:
            return "replay"
        return f"{self.letter.commit_lsn}#{self.letter.ordinal}"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which letters of the store's slot a command acts on; filters combine (and)."""

    ids: tuple[int, ...] = ()
    table: str | None = None
    rule: str | None = None
    before: datetime | None = None
    upto_id: int | None = None

    def where(self, slot: str, after_id: int = 0) -> tuple[str, list[Any]]:
        """The SQL condition and its parameters."""
        clauses, params = ["slot = %s", "id > %s"], [slot, after_id]
        for clause, value in (
            ("id = ANY (%s)", list(self.ids) if self.ids else None),
            ("table_name = %s", self.table),
            ("rule = %s", self.rule),
            ("created_at < %s", self.before),
            ("id <= %s", self.upto_id),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return " AND ".join(clauses), params


class DeadLetterStore:
    """Dead letters of one slot in ``cdc_tracker.dead_letters``, on one connection.

    Every method raises ``SourceError`` (or a subclass) when the database fails.
    """

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], slot: str) -> None:
        self.conn = conn
        self.slot = slot

    def ensure_schema(self) -> None:
        with translate_errors(self.slot):
            schema.ensure(self.conn)

    def save(self, letters: list[DeadLetter]) -> None:
        """Store ``letters`` durably (one transaction); raises ``SourceError``."""
        if not letters:
            return
        replayed = [self._row(one) for one in letters if one.commit_lsn == NO_POSITION]
        streamed = [self._row(one) for one in letters if one.commit_lsn != NO_POSITION]
        with (
            translate_errors(self.slot),
            self.conn.transaction(),
            self.conn.cursor() as cursor,
        ):
            if streamed:
                cursor.executemany(_INSERT_SQL, streamed)
            if replayed:
                cursor.executemany(_REPLAY_INSERT_SQL, replayed)

    def _row(self, letter: DeadLetter) -> tuple[Any, ...]:
        return (
            self.slot,
            letter.table,
            letter.rule,
            letter.reason,
            str(letter.commit_lsn),
            letter.ordinal,
            _stored_json(letter.change),
            None if letter.call is None else _stored_json(letter.call),
        )

    # -- reading and curing (cdc-tracker deadletters) ---------------------------

    def require_table(self) -> None:
        """Raise a friendly ``SourceError`` when no dead letter was ever stored.

        Brings a table made by an older version up to date (the attempt counter).
        """
        with translate_errors(self.slot):
            row = self.conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL, EXISTS (SELECT 1 FROM "
                "information_schema.columns WHERE table_schema = 'cdc_tracker' "
                "AND table_name = 'dead_letters' AND column_name = 'attempts')",
                (TABLE,),
            ).fetchone()
            assert row is not None
            if row[0] and not row[1]:
                schema.upgrade(self.conn)
        if not row[0]:
            raise SourceError(
                f"no dead letters: the table {TABLE} does not exist yet",
                hint="the daemon creates it when it stores its first dead letter",
            )

    def count_by_reason(self, selection: Selection) -> list[tuple[str, int]]:
        """How many letters match, per reason, the most frequent first."""
        where, params = selection.where(self.slot)
        with translate_errors(self.slot):
            rows = self.conn.execute(
                f"SELECT reason, count(*) FROM {TABLE} WHERE {where} "
                "GROUP BY reason ORDER BY 2 DESC, 1",
                params,
            ).fetchall()
        return [(str(reason), int(str(n))) for reason, n in rows]

    def count(self, selection: Selection, *, after_id: int = 0) -> int:
        """How many letters match, from ``after_id`` on."""
        where, params = selection.where(self.slot, after_id)
        with translate_errors(self.slot):
            row = self.conn.execute(
                f"SELECT count(*) FROM {TABLE} WHERE {where}", params
            ).fetchone()
        return int(str(row[0])) if row is not None else 0

    def count_other_slots(self) -> dict[str, int]:
        """Letters stored by other slots of this database, by slot."""
        with translate_errors(self.slot):
            rows = self.conn.execute(
                f"SELECT slot, count(*) FROM {TABLE} WHERE slot <> %s "
                "GROUP BY slot ORDER BY slot",
                (self.slot,),
            ).fetchall()
        return {str(slot): int(str(n)) for slot, n in rows}

    def fetch(
        self,
        selection: Selection,
        *,
        limit: int | None = None,
        after_id: int = 0,
        payloads: bool = False,
    ) -> list[StoredLetter]:
        """Matching letters in id order, from ``after_id`` on, at most ``limit``."""
        where, params = selection.where(self.slot, after_id)
        query = _SELECT_SQL.format(
            payload="change::text, call::text" if payloads else "NULL, NULL",
            where=where,
            limit=" LIMIT %s" if limit else "",
        )
        if limit:
            params.append(limit)
        with translate_errors(self.slot):
            rows = self.conn.execute(query, params).fetchall()
        return [_stored(row) for row in rows]

    def get(self, letter_id: int) -> StoredLetter:
        """The letter with this id, payloads included; raises if there is none."""
        self.require_ids([letter_id])
        return self.fetch(Selection(ids=(letter_id,)), payloads=True)[0]

    def require_ids(self, ids: list[int]) -> None:
        """Raise ``CdcTrackerError`` naming the ids this slot holds no letter for."""
        with translate_errors(self.slot):
            rows = self.conn.execute(
                f"SELECT id FROM {TABLE} WHERE slot = %s AND id = ANY (%s)",
                (self.slot, ids),
            ).fetchall()
        missing = sorted(set(ids) - {int(str(row[0])) for row in rows})
        if missing:
            raise CdcTrackerError(
                f"no dead letter with id {', '.join(map(str, missing))} "
                f"for slot '{self.slot}'",
                hint="cdc-tracker deadletters list shows the ids (--slot for another)",
            )

    def last_id(self) -> int:
        """The highest id stored for this slot (0 when there is none)."""
        with translate_errors(self.slot):
            row = self.conn.execute(
                f"SELECT coalesce(max(id), 0) FROM {TABLE} WHERE slot = %s",
                (self.slot,),
            ).fetchone()
        return int(str(row[0])) if row is not None else 0

    def try_lock(self) -> bool:
        """Take the session lock that keeps two retries of this slot apart."""
        with translate_errors(self.slot):
            row = self.conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                (_RETRY_LOCK_CLASS, self.slot),
            ).fetchone()
        return bool(row and row[0])

    def delete(self, selection: Selection) -> int:
        """Delete the matching letters; returns how many."""
        where, params = selection.where(self.slot)
        with translate_errors(self.slot):
            cursor = self.conn.execute(f"DELETE FROM {TABLE} WHERE {where}", params)
        return cursor.rowcount

    def record_failures(self, failures: list[tuple[int, str]]) -> None:
        """Give each (id, reason) its new reason and count one more attempt."""
        if not failures:
            return
        with (
            translate_errors(self.slot),
            self.conn.transaction(),
            self.conn.cursor() as cursor,
        ):
            cursor.executemany(
                f"UPDATE {TABLE} SET reason = %s, attempts = attempts + 1, "
                "last_attempt_at = now() WHERE id = %s AND slot = %s",
                [(reason, letter_id, self.slot) for letter_id, reason in failures],
            )


def _stored(row: tuple[Any, ...]) -> StoredLetter:
    (letter_id, created, slot, table, rule, reason, lsn, ordinal) = row[:8]
    attempts, last_attempt, from_delivery, change, call = row[8:]
    letter = DeadLetter(
        table=table,
        rule=rule,
        reason=reason,
        commit_lsn=Lsn.parse(lsn),
        ordinal=ordinal,
        change={} if change is None else _restored(loads(change)),
        call=None if call is None else _restored(loads(call)),
    )
    return StoredLetter(
        letter_id, created, slot, letter, attempts, last_attempt, from_delivery
    )


def to_json(value: Any, option: int = 0) -> str:
    """JSON text with exact decimals that jsonb takes (see ``_Storing``)."""
    return _Storing().text(value, option)


def _stored_json(document: dict[str, Any]) -> str:
    """A letter's change or call as stored, read back as it was by ``_restored``.

    A number jsonb cannot keep as written (beyond its numeric, or printed otherwise:
    ``1E+30`` as 31 digits, ``-0.0`` as ``0.0``) is stored as its text, and its
    place is listed under ``NUMBERS_AS_TEXT``. What cannot be restored (a lone
    surrogate) is marked under ``ALTERED``.
    """
    places: list[list[str | int]] = []
    kept = _numbers_as_text(document, [], places)
    if places:
        kept[NUMBERS_AS_TEXT] = places
    storing = _Storing()
    text = storing.text(kept)
    if not storing.altered:
        return text
    return _Storing().text({**kept, ALTERED: sorted(storing.altered)})


def _numbers_as_text(value: Any, place: list[str | int], places: list[Any]) -> Any:
    if isinstance(value, Decimal) and value.is_finite() and _rewritten(value):
        places.append(place)
        return str(value)
    if isinstance(value, dict):
        return {
            key: _numbers_as_text(item, [*place, key], places)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [
            _numbers_as_text(item, [*place, index], places)
            for index, item in enumerate(value)
        ]
    return value


def _restored(document: Any) -> Any:
    """A stored change or call with its numbers stored as text made numbers again."""
    if not isinstance(document, dict):
        return document
    for place in document.pop(NUMBERS_AS_TEXT, None) or []:
        *path, last = place
        try:
            parent = document
            for step in path:
                parent = parent[step]
            parent[last] = Decimal(parent[last])
        except (LookupError, TypeError, ArithmeticError, ValueError):
            continue  # edited by hand: leave it as it is
    return document


class _Storing:
    """Writes JSON that jsonb takes, whatever a letter holds, and says what that
    changed: a letter must always be storable, or the daemon would stop on it at
    every start.

    NUL is dropped and a lone surrogate (a json value's ``\\ud800``) becomes
    U+FFFD, since jsonb holds neither (numbers are ``_stored_json``'s concern). The
    reason column says what went wrong.
    """

    def __init__(self) -> None:
        self.altered: set[str] = set()

    def text(self, value: Any, option: int = 0) -> str:
        try:
            encoded = orjson.dumps(value, default=self._exact, option=option)
        except orjson.JSONEncodeError:
            # An int beyond 64 bits (a numeric without a fraction), or a surrogate.
            cleaned = self._storable(value)
            try:
                encoded = orjson.dumps(cleaned, default=self._exact, option=option)
            except orjson.JSONEncodeError as exc:
                # Nothing else is known to reach here: keep the letter, not its value.
                self.altered.add("the value could not be stored")
                encoded = orjson.dumps(
                    {"unstorable": str(exc), ALTERED: sorted(self.altered)}
                )
        return _NUL.sub(r"\1", encoded.decode())

    def _exact(self, value: object) -> orjson.Fragment | str:
        if isinstance(value, Decimal):
            if not value.is_finite():
                return str(value)
            written: orjson.Fragment = exact_number(value)  # 0.00000015, not 1.5E-7
            return written
        raise TypeError(f"cannot store a value of type {type(value).__name__}")

    def _storable(self, value: Any) -> Any:
        """``value`` with big ints as exact fragments, lone surrogates replaced."""
        if isinstance(value, str):
            utf16 = value.encode("utf-16", "surrogatepass")
            cleaned = utf16.decode("utf-16", "replace")
            if cleaned != value:
                self.altered.add("lone surrogates are stored as U+FFFD")
            return cleaned
        if isinstance(value, dict):
            return {
                self._storable(key): self._storable(item) for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._storable(item) for item in value]
        return widen_big_ints(value)


def _rewritten(value: Decimal) -> bool:
    """Whether jsonb would not keep the finite number as written: beyond its
    numeric, or printed otherwise (a positive exponent, a negative zero)."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    return (
        exponent > 0
        or (value.is_zero() and value.is_signed())
        or -exponent > NUMERIC_MAX_SCALE
        or value.adjusted() >= NUMERIC_MAX_INTEGER_DIGITS
    )
