"""A row read as text becomes the ``Change`` wal2json would have written for it.

wal2json writes the columns of the number types (integers, oid, real, double,
numeric) as bare JSON numbers, NaN and Infinity as null, booleans as JSON
booleans, a bytea as its hex digits without ``\\x``, and every other value as the
text the server prints, by the column's own type (a domain over numeric is text).
Doing the same here, from the same text and with the same JSON number parsing,
gives the mapping identical values, so the converters of
``cdc_tracker.mapping.values`` apply exactly as in the live path.

A replayed change is an insert at its cursor value: ``commit_time`` is the row's
cursor, ``commit_lsn`` is 0/0 and ``ordinal`` the row's number in the run. Only
the primary key names the calls of an insert, so neither position reaches a
messageId; they label dead letters.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Any

from cdc_tracker.exact_json import integer
from cdc_tracker.mapping.values import converter_for
from cdc_tracker.model import NO_POSITION, Action, Change, TableInfo
from cdc_tracker.replay.reader import Row

# int8, int2, int4, oid, float4, float8, numeric; bool.
NUMBER_OIDS = frozenset({20, 21, 23, 26, 700, 701, 1700})
BOOL_OID = 16
BYTEA_OID = 17

_NOT_FINITE = frozenset({"NaN", "Infinity", "-Infinity"})


def _number(text: str) -> Any:
    # What the live path's decoder makes of the bare number: int, or Decimal of
    # its text. It reads a double's -0 as the integer 0, and so does this.
    if text in _NOT_FINITE:
        return None
    if "." in text or "e" in text or "E" in text:
        return Decimal(text)
    return 0 if text == "-0" else integer(text)


def _boolean(text: str) -> Any:
    return text == "t"


def _bytes(text: str) -> Any:
    # wal2json writes a bytea's hex digits without the "\x" the server prints.
    return text[2:] if text.startswith("\\x") else text


def _reviver(oid: int) -> Callable[[str], Any] | None:
    if oid in NUMBER_OIDS:
        return _number
    if oid == BOOL_OID:
        return _boolean
    if oid == BYTEA_OID:
        return _bytes
    return None


class ChangeMaker:
    """Builds the insert ``Change`` of each row of one table."""

    def __init__(
        self, info: TableInfo, oids: dict[str, int], cursor: str, zone: tzinfo
    ) -> None:
        self.info = info
        self.columns = list(info.columns)
        self._revivers = [_reviver(oids.get(name, 0)) for name in self.columns]
        self._cursor = self.columns.index(cursor)
        self._moment = converter_for(info.columns[cursor], zone)

    def change(self, row: Row, ordinal: int) -> Change:
        """The change of ``row``; its cursor value must be a finite timestamp."""
        new = {
            name: value if value is None or revive is None else revive(value)
            for name, value, revive in zip(
                self.columns, row, self._revivers, strict=True
            )
        }
        moment = self._moment(row[self._cursor])
        # The window's bounds are finite, so a row in it has a real timestamp.
        assert isinstance(moment, datetime)
        return Change(
            table=self.info.name,
            action=Action.INSERT,
            new=new,
            old=None,
            types=self.info.columns,
            commit_lsn=NO_POSITION,
            ordinal=ordinal,
            commit_time=moment,
            key=self.info.key,
        )
