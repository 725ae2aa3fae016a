"""Parse wal2json format-2 rows into the pipeline's plain data.

Format 2 writes one JSON document per row: ``B`` opens a transaction and announces
its commit position (``nextlsn``), ``I``/``U``/``D`` carry one change each, ``C``
closes it. Numerics are bare JSON numbers with every digit, so they are parsed as
``Decimal``, never through ``float``.

A change row (most rows) is read in one pass by ``_rowparse``, a small C reader
built with the package, straight into the change's dicts. Any other row, or one
it leaves alone (see its header), is decoded by msgspec into the typed shapes
below: about five times faster than ``json`` with a ``Decimal`` hook, with the
same exact numerics (every float literal goes to ``Decimal`` as written; integers
of any width stay ``int``). Both make the same events of a row; without a C
compiler at install, msgspec reads every row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from cdc_tracker.errors import DecodeError
from cdc_tracker.exact_json import loads
from cdc_tracker.model import Action, Change, Lsn

_read_change: Callable[[str | bytes | memoryview], tuple[Any, ...] | None] | None
try:
    from cdc_tracker.source._rowparse import change as _read_change
except ImportError:  # built without a C compiler: msgspec reads every row
    _read_change = None

# wal2json options cdc-tracker streams with (add-tables is appended).
PLUGIN_OPTIONS: tuple[str, ...] = (
    "format-version", "2",
    "include-transaction", "true",
    "include-types", "true",
    "include-timestamp", "true",
    "include-lsn", "true",
    "include-pk", "true",
    "include-domain-data-type", "true",
)  # fmt: skip
MESSAGE_PREFIX = "cdc-tracker"


class _Column(msgspec.Struct, gc=False):
    name: str
    type: str
    value: Any


class _Key(msgspec.Struct, gc=False):
    name: str


class _Row(msgspec.Struct, gc=False):
    """One wal2json format-2 row; fields an action does not use stay unset."""

    action: str
    timestamp: str | None = None  # null on a message outside a transaction
    nextlsn: str = ""
    lsn: str = ""  # of the change's own WAL record
    schema: str = ""
    table: str = ""
    columns: list[_Column] | None = None
    identity: list[_Column] | None = None
    pk: list[_Key] = []
    prefix: str = ""
    transactional: bool = False


_decode = msgspec.json.Decoder(_Row, float_hook=Decimal).decode
_ACTIONS = {"I": Action.INSERT, "U": Action.UPDATE, "D": Action.DELETE}


@dataclass(slots=True)
class Begin:
    """A transaction starts; it will be fully consumed at ``commit_lsn``."""

    commit_lsn: Lsn
    commit_time: datetime


@dataclass(slots=True)
class Commit:
    """The transaction announced by the last ``Begin`` is complete."""

    commit_lsn: Lsn


@dataclass(slots=True)
class Truncate:
    """A TRUNCATE of a streamed table: no rows, but the table was emptied."""

    table: str


@dataclass(slots=True)
class Message:
    """A ``pg_logical_emit_message`` with our prefix (a heartbeat)."""

    prefix: str
    transactional: bool


class Transaction:
    """Decoding state across rows: which transaction we are in, its ordinal, and
    the last change's WAL position with how many changes shared it (see
    ``_read``)."""

    __slots__ = ("commit_lsn", "commit_time", "last_lsn", "ordinal", "sharing")

    def __init__(self) -> None:
        self.commit_lsn = Lsn(0)
        self.commit_time = datetime.min
        self.ordinal = 0
        self.last_lsn = ""
        self.sharing = 0


Event = Begin | Change | Commit | Truncate | Message


def parse_row(data: str | bytes | memoryview, tx: Transaction) -> Event:
    """Turn one wal2json row into an event, updating ``tx`` on B and C.

    Raises ``DecodeError`` for anything we do not understand: a row is never
    skipped, the pipeline stops and names the position instead.
    """
    if _read_change is not None:
        read = _read_change(data)
        if read is not None:
            return _read(read, tx)
    try:
        try:
            row = _decode(data)
        except msgspec.ValidationError:
            # msgspec refuses integers over Python's digit limit, which a numeric
            # may exceed: such a row takes the slower path, as exact.
            row = msgspec.convert(loads(data), _Row)
        action = row.action
        kind = _ACTIONS.get(action)
        if kind is not None:
            return _change(row, kind, tx)
        if action == "B":
            return _begin(row, tx)
        if action == "C":
            return Commit(Lsn.parse(row.nextlsn))
        if action == "T":
            return Truncate(f"{row.schema}.{row.table}")
        if action == "M":
            return Message(row.prefix, row.transactional)
    except (
        msgspec.DecodeError,
        ValueError,
        KeyError,
        TypeError,
        ArithmeticError,
    ) as exc:
        raise DecodeError(
            f"cannot parse wal2json row in transaction {tx.commit_lsn}: "
            f"{type(exc).__name__}"
        ) from exc
    raise DecodeError(f"unknown wal2json action {action!r} in {tx.commit_lsn}")


def _begin(row: _Row, tx: Transaction) -> Begin:
    tx.commit_lsn = Lsn.parse(row.nextlsn)
    tx.commit_time = datetime.fromisoformat(row.timestamp or "")
    tx.ordinal = 0
    tx.last_lsn = ""
    return Begin(tx.commit_lsn, tx.commit_time)


def _change(row: _Row, action: Action, tx: Transaction) -> Change:
    if not row.schema or not row.table:
        raise KeyError("schema")
    columns = row.columns
    identity = row.identity
    new = None
    types: dict[str, str] = {}
    if action is not Action.DELETE and columns is not None:
        new = {column.name: column.value for column in columns}
        types = {column.name: column.type for column in columns}
    old = None
    if identity is not None:
        old = {column.name: column.value for column in identity}
        if not old.keys() <= types.keys():
            # The old image holds columns the new one does not (a delete, or an
            # unchanged TOASTed value): their types come from it.
            for column in identity:
                types.setdefault(column.name, column.type)
    key = tuple([pk.name for pk in row.pk])
    return _read((row.action, row.schema, row.table, row.lsn, new, old, types, key), tx)


def _read(read: tuple[Any, ...], tx: Transaction) -> Change:
    """The change of a row as ``_rowparse`` reads it: (action, schema, table,
    lsn, new, old, types, key)."""
    action, schema, table, lsn, new, old, types, key = read
    ordinal = tx.ordinal
    tx.ordinal = ordinal + 1
    # One WAL record may hold several rows (COPY's multi-row inserts), all of
    # one table: they share its position, told apart by their order in it.
    # (Inline, not a method: this runs once per change.)
    if lsn == tx.last_lsn:
        tx.sharing += 1
        wal_position = f"{lsn}.{tx.sharing}"
    else:
        tx.last_lsn, tx.sharing = lsn, 0
        wal_position = lsn
    # Positional: keywords cost a fifth of this function, once per change.
    return Change(
        schema + "." + table,
        _ACTIONS[action],
        new,
        old,
        types,
        tx.commit_lsn,
        ordinal,
        tx.commit_time,
        key,
        wal_position,
    )
