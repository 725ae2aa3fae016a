"""Parse wal2json format-2 rows into the pipeline's plain data.

Format 2 writes one JSON document per row: ``B`` opens a transaction and announces
its commit position (``nextlsn``), ``I``/``U``/``D`` carry one change each, ``C``
closes it. Numerics are bare JSON numbers with every digit, so they are parsed as
``Decimal``, never through ``float``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from cdc_tracker.errors import DecodeError
from cdc_tracker.model import Action, Change, Lsn

# wal2json options cdc-tracker passes on every peek (add-tables is appended).
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

_decode = json.JSONDecoder(parse_float=Decimal).decode
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
    """A TRUNCATE of a tracked table: no rows, but the table was emptied."""

    table: str


@dataclass(slots=True)
class Message:
    """A ``pg_logical_emit_message`` with our prefix (a heartbeat)."""

    prefix: str
    transactional: bool


class Transaction:
    """Decoding state across rows: which transaction we are in and its ordinal."""

    __slots__ = ("commit_lsn", "commit_time", "ordinal")

    def __init__(self) -> None:
        self.commit_lsn = Lsn(0)
        self.commit_time = datetime.min
        self.ordinal = 0


Event = Begin | Change | Commit | Truncate | Message


def parse_row(data: str, tx: Transaction) -> Event:
    """Turn one wal2json row into an event, updating ``tx`` on B and C.

    Raises ``DecodeError`` for anything we do not understand: a row is never
    skipped, the pipeline stops and names the position instead.
    """
    try:
        row = _decode(data)
        action = row["action"]
        kind = _ACTIONS.get(action)
        if kind is not None:
            return _change(row, kind, tx)
        if action == "B":
            return _begin(row, tx)
        if action == "C":
            return Commit(Lsn.parse(row["nextlsn"]))
        if action == "T":
            return Truncate(f"{row['schema']}.{row['table']}")
        if action == "M":
            return Message(row.get("prefix", ""), bool(row.get("transactional")))
    except (ValueError, KeyError, TypeError) as exc:
        raise DecodeError(
            f"cannot parse wal2json row in transaction {tx.commit_lsn}: "
            f"{type(exc).__name__}"
        ) from exc
    raise DecodeError(f"unknown wal2json action {action!r} in {tx.commit_lsn}")


def _begin(row: dict[str, Any], tx: Transaction) -> Begin:
    tx.commit_lsn = Lsn.parse(row["nextlsn"])
    tx.commit_time = datetime.fromisoformat(row["timestamp"])
    tx.ordinal = 0
    return Begin(tx.commit_lsn, tx.commit_time)


def _change(row: dict[str, Any], action: Action, tx: Transaction) -> Change:
    types: dict[str, str] = {}
    new = _image(row.get("columns"), types) if action is not Action.DELETE else None
    old = _image(row.get("identity"), types)
    ordinal = tx.ordinal
    tx.ordinal = ordinal + 1
    return Change(
        table=f"{row['schema']}.{row['table']}",
        action=action,
        new=new,
        old=old,
        types=types,
        commit_lsn=tx.commit_lsn,
        ordinal=ordinal,
        commit_time=tx.commit_time,
        key=tuple(pk["name"] for pk in row.get("pk", ())),
    )


def _image(columns: list[dict[str, Any]] | None, types: dict[str, str]) -> Any:
    if columns is None:
        return None
    image = {}
    for column in columns:
        name = column["name"]
        image[name] = column["value"]
        types[name] = column["type"]
    return image
