"""Deterministic messageIds: the same logical event always carries the same id.

RudderStack and Segment drop a call whose messageId they have already stored, so
a call re-sent after a crash, or re-made by a backfill, is harmless:

- a call triggered by an insert is named by (namespace, rule, primary key): the live
  daemon and ``replay`` give the same row the same id;
- any other call is named by (namespace, rule, commit position, the change's own
  WAL position), the identity of a change in the WAL whatever else is streamed.

An identify rule is named with a fingerprint of its definition, so that a trait
added to it makes new ids: a backfill then delivers the new traits instead of
having them dropped as duplicates. A backfill of a table whose inserts are named
by position (keys reused) names calls by (rule, definition, key, cursor value).
A backfill's identify also carries its traits and the row's cursor value in its
id (``with_traits``): it sends the row as it is now, and a row updated since its
insert (or since the last backfill) must not be dropped as that call's duplicate.

The namespace (database and slot by default) keeps ids unique across everything a
workspace receives, since dedup is not scoped per source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, tzinfo
from hashlib import blake2b
from typing import Any

from cdc_tracker.model import Lsn
from cdc_tracker.rules.rulebook import Rule

PREFIX = "cdct-"


def insert_id(namespace: str, rule_id: str, key_values: Iterable[Any]) -> str:
    """The id of a call made when a row with this primary key was inserted."""
    return digest(insert_prefix(namespace, rule_id) + key_text(key_values))


def insert_prefix(namespace: str, rule_id: str) -> str:
    """What every insert id of a rule is made of before the key (the hot path
    builds it once per rule)."""
    return f"{namespace}\x1e{rule_id}\x1einsert\x1e"


def with_traits(material: str, traits: bytes) -> str:
    """The id of ``material`` (what ``digest`` hashes) and of the traits it
    carries, as JSON (its keys sorted)."""
    hashed = blake2b(material.encode(), digest_size=16)
    hashed.update(b"\x1e")
    hashed.update(traits)
    return PREFIX + hashed.hexdigest()


def key_text(key_values: Iterable[Any]) -> str:
    """A primary key's values as hashed into ids."""
    return "\x1f".join([str(value) for value in key_values])


def position_id(namespace: str, rule_id: str, commit_lsn: Lsn, at: str | int) -> str:
    """The id of a call made by the change at ``at`` in the transaction that
    commits at ``commit_lsn``: its WAL position (``Change.wal_position``), or its
    ordinal for a change stored before positions were kept."""
    return _position_id_after(position_prefix(namespace, rule_id), commit_lsn, at)


def position_prefix(namespace: str, rule_id: str) -> bytes:
    """What every position id of a rule is made of before the position (the hot
    path builds it once per rule)."""
    return f"{namespace}\x1e{rule_id}\x1e".encode()


def _position_id_after(prefix: bytes, commit_lsn: Lsn, at: str | int) -> str:
    """``position_id`` from the rule's ``position_prefix``."""
    return digest(prefix.decode() + f"{int(commit_lsn)}\x1e{at}")


def _key_id(prefix: bytes, new: dict[str, Any], key: tuple[str, ...]) -> str:
    """``insert_id`` from the rule's ``insert_prefix`` (encoded) and the new
    row, a key column it lacks read as None."""
    return digest(prefix.decode() + key_text([new.get(column) for column in key]))


def digest(material: str) -> str:
    """The messageId hashed from ``material``."""
    return PREFIX + blake2b(material.encode(), digest_size=16).hexdigest()


def snapshot_material(
    namespace: str,
    rule_id: str,
    definition: str,
    key_values: Iterable[Any],
    version: object,
) -> str:
    """What names a backfilled call on a table whose insert ids are positional:
    its rule and definition, its key and the row's cursor value (``version``)."""
    key = key_text(key_values)
    return f"{namespace}\x1e{rule_id}\x1e{definition}\x1e{key}\x1e{version}"


def insert_name(rule: Rule, zone: tzinfo = UTC) -> str:
    """What names ``rule`` (of a rulebook in time zone ``zone``) in insert ids.

    An identify also carries its definition: editing its traits makes new ids, so a
    backfill's new traits are not dropped as duplicates (a repeated identify is
    harmless). A track event keeps its name alone: a re-sent event must stay a
    duplicate.
    """
    if rule.kind != "identify":
        return rule.id
    return f"{rule.id}#{definition(rule, zone)}"


def definition(rule: Rule, zone: tzinfo = UTC) -> str:
    """A short fingerprint of what a rule sends: its expressions, and the
    lookups they read through (their tables and keys). The rulebook's time zone
    is part of it (how timestamp columns are read), unless it is UTC: the ids
    made before it counted stay as they were."""
    parts = [
        rule.kind,
        rule.event or "",
        *(f"{key}={expr.text}" for key, expr in rule.expressions()),
        repr(sorted((rule.integrations or {}).items())),
        repr(rule.context),
    ]
    # Where the related rows it reads come from (ids of rules reading none stay
    # as they were made).
    read = sorted(
        {ref.lookup for _, expr in rule.expressions() for ref in expr.lookups}
    )
    parts += [
        f"lookup {name}={spec.table}:{spec.key}"
        for name in read
        if (spec := rule.lookups.get(name)) is not None
    ]
    if str(zone) != "UTC":
        parts.append(f"timezone={zone}")
    return blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()


# The hot path names every call with one of these two: computed in C
# (mapping/_writer.c) when it is built, the same ids.
key_id: Callable[[bytes, dict[str, Any], tuple[str, ...]], str]
position_id_after: Callable[[bytes, Lsn, str | int], str]
try:
    from cdc_tracker.mapping._writer import key_id, position_id_after
except ImportError:  # built without a C compiler
    key_id, position_id_after = _key_id, _position_id_after
