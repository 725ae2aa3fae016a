"""Deterministic messageIds: the same logical event always carries the same id.

RudderStack and Segment drop a call whose messageId they have already stored, so
a call re-sent after a crash, or re-made by a backfill, is harmless:

- a call triggered by an insert is named by (namespace, rule, primary key): the live
  daemon and ``replay`` give the same row the same id;
- any other call is named by (namespace, rule, commit position, ordinal in the
  transaction), the identity of a change in the WAL.

A backfill (``replay``) names an identify call by (namespace, rule, the rule's
definition, primary key, the row's cursor value): replaying a window twice sends
nothing new, while a trait added to the rule makes new ids, so the new traits are
not dropped as duplicates of the insert-time identify.

The namespace (database and slot by default) keeps ids unique across everything a
workspace receives, since dedup is not scoped per source.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b
from typing import Any

from cdc_tracker.model import Lsn

PREFIX = "cdct-"


def insert_id(namespace: str, rule_id: str, key_values: Iterable[Any]) -> str:
    """The id of a call made when a row with this primary key was inserted."""
    key = "\x1f".join(str(value) for value in key_values)
    return _digest(f"{namespace}\x1e{rule_id}\x1einsert\x1e{key}")


def position_id(namespace: str, rule_id: str, commit_lsn: Lsn, ordinal: int) -> str:
    """The id of a call made by the change at (commit position, ordinal)."""
    return _digest(f"{namespace}\x1e{rule_id}\x1e{int(commit_lsn)}\x1e{ordinal}")


def _digest(material: str) -> str:
    return PREFIX + blake2b(material.encode(), digest_size=16).hexdigest()


def snapshot_id(
    namespace: str,
    rule_id: str,
    definition: str,
    key_values: Iterable[Any],
    version: object,
) -> str:
    """The id of a call a backfill makes from a row as it is now."""
    key = "\x1f".join(str(value) for value in key_values)
    return _digest(f"{namespace}\x1e{rule_id}\x1e{definition}\x1e{key}\x1e{version}")
