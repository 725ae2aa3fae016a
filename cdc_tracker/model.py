"""Plain data that flows through the pipeline: positions, changes, calls, dead letters.

This module imports neither psycopg nor httpx: every stage speaks in these types.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec


class Lsn(int):
    """A WAL position. Prints the way PostgreSQL does: ``16/B374D848``."""

    __slots__ = ()

    @classmethod
    def parse(cls, text: str) -> Lsn:
        high, _, low = text.partition("/")
        return cls((int(high, 16) << 32) | int(low, 16))

    def __str__(self) -> str:
        return f"{self >> 32:X}/{self & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"


# The position of a replayed row's change, and of its dead letters: a snapshot
# of a row has none.
NO_POSITION = Lsn(0)


class Action(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


class Missing:
    """The value of a column the change does not carry (an unchanged TOASTed value)."""

    _instance: Missing | None = None

    def __new__(cls) -> Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING = Missing()


class Change(msgspec.Struct):
    """One row change, as wal2json reported it, named by (commit_lsn, ordinal).

    ``new`` holds the columns wal2json wrote for the new row image (``None`` for a
    delete); ``old`` the ``identity`` image (the key, or the whole old row under
    REPLICA IDENTITY FULL). A column absent from ``new`` is unknown, not null. Values
    are as decoded from JSON (numbers as ``int`` or ``Decimal``); ``types`` names each
    column's declared type so that the mapping converts them by type, lazily: the
    stream's rows of one table share one ``types`` dict, so never change it. ``key``
    names the primary-key columns.

    ``ordinal`` counts the changes streamed in the transaction, and so depends on
    which tables are streamed; ``wal_position`` does not: the change's own WAL
    position (``0/15071B8``; ``0/15071B8.2`` for the third row of one multi-row
    record, as COPY writes). It names the calls of updates and deletes; empty for
    a change read from a table (a replay).

    A msgspec struct rather than a dataclass: one is made per change, in a
    tenth of a microsecond instead of three.
    """

    table: str
    action: Action
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    types: dict[str, str]
    commit_lsn: Lsn
    ordinal: int
    commit_time: datetime
    key: tuple[str, ...] = ()
    wal_position: str = ""

    @property
    def position(self) -> str:
        return f"{self.commit_lsn}#{self.ordinal}"


@dataclass(slots=True)
class Call:
    """One identify or track call, ready to encode.

    ``payload`` is the whole call as RudderStack expects it except ``sentAt``, which
    the shipper adds per request. ``user_id`` is kept apart to keep per-user order.
    """

    message_id: str
    user_id: str
    payload: dict[str, Any]
    rule: str
    commit_lsn: Lsn
    ordinal: int
    table: str = ""


@dataclass(slots=True)
class DeadLetter:
    """A change (or call) that could not be mapped or delivered, and why."""

    table: str
    rule: str | None
    reason: str
    commit_lsn: Lsn
    ordinal: int
    change: dict[str, Any] = field(default_factory=dict)
    call: dict[str, Any] | None = None


@dataclass(slots=True)
class TableInfo:
    """One table as the catalog describes it."""

    name: str
    replica_identity: str  # default | full | index | nothing
    columns: dict[str, str]  # name -> declared type (a domain's base type)
    key: tuple[str, ...]
    partitioned: bool = False  # a partitioned parent: wal2json names its leaves
    leaves: tuple[str, ...] = ()
    identity_index: tuple[str, ...] = ()  # REPLICA IDENTITY USING INDEX's columns
    # A partitioned table's leaves, each with the columns its old image carries.
    leaf_keys: dict[str, tuple[str, ...]] | None = None

    @property
    def full_identity(self) -> bool:
        return self.replica_identity == "full"

    @property
    def decodes_updates(self) -> bool:
        """Whether PostgreSQL logs an old key with every update and delete (else
        wal2json skips them): for a partitioned table, on every leaf."""
        if self.leaf_keys:
            return all(self.leaf_keys.values())
        return bool(self.old_key)

    def lacking(self, columns: Iterable[str]) -> list[str]:
        """The tables (this one, or those of its leaves) whose old image lacks one
        of ``columns``: those to give REPLICA IDENTITY FULL."""
        wanted = set(columns)
        if not self.leaf_keys:
            return [] if wanted <= set(self.old_key) and self.old_key else [self.name]
        return [
            leaf
            for leaf, key in self.leaf_keys.items()
            if not key or not wanted <= set(key)
        ]

    @property
    def old_key(self) -> tuple[str, ...]:
        """The columns an update's or a delete's old image carries (every column
        under FULL); none when PostgreSQL logs no old key, and wal2json then
        skips the table's updates and deletes."""
        if self.leaf_keys and not self.full_identity:
            carried = set.intersection(*(set(k) for k in self.leaf_keys.values()))
            return tuple(column for column in self.columns if column in carried)
        return old_key_of(
            self.replica_identity, tuple(self.columns), self.key, self.identity_index
        )


def old_key_of(
    identity: str,
    columns: tuple[str, ...],
    key: tuple[str, ...],
    index: tuple[str, ...],
) -> tuple[str, ...]:
    """The columns an old image carries under REPLICA IDENTITY ``identity``, for a
    table of ``columns`` with primary ``key`` and identity ``index`` (none when the
    index was dropped since)."""
    if identity == "full":
        return columns
    if identity == "index":
        return index
    return key if identity == "default" else ()
