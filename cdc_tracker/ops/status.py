"""What ``cdc-tracker status`` reports about one slot, read from the live database.

``read_status`` takes one consistent look: the slot's position and the WAL it holds,
the checkpoint the daemon keeps (last batch, call counters, when it was last caught
up), the dead letters waiting, and the active replica (the session holding the
slot's advisory lock). It only reads; a database failure raises ``SourceError``.
``render_table`` and ``to_document`` present it for people and for machines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import psycopg

from cdc_tracker.daemon.checkpoint import Checkpoint
from cdc_tracker.deadletters.store import DeadLetterStore, Selection
from cdc_tracker.errors import ConfigError
from cdc_tracker.model import Lsn
from cdc_tracker.source.slot import LOCK_CLASS, slot_lock_id, translate_errors
from cdc_tracker.wording import counted

Connection = psycopg.Connection[tuple[Any, ...]]

_SLOT_SQL = """
SELECT plugin, confirmed_flush_lsn::text, restart_lsn::text,
       pg_current_wal_lsn()::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
       wal_status, safe_wal_size, active_pid, database, current_database()
FROM pg_replication_slots WHERE slot_name = %s
"""

# Two-key advisory locks show the keys as classid/objid (oids) and objsubid 2.
_REPLICA_SQL = """
SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start, a.state
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
"""

# to_jsonb keeps this working on a checkpoint table of an older version.
_CHECKPOINT_SQL = "SELECT to_jsonb(c) FROM cdc_tracker.checkpoints c WHERE slot = %s"


@dataclass(frozen=True, slots=True)
class SlotPosition:
    """Where the slot is and how much WAL it costs.

    ``retained_bytes``: WAL the server keeps for the slot (current - restart_lsn);
    ``pending_bytes``: WAL written since the confirmed position (current -
    confirmed_flush_lsn), most of it often from untracked tables.
    """

    plugin: str
    confirmed: Lsn
    restart: Lsn | None
    current: Lsn
    retained_bytes: int | None
    pending_bytes: int
    wal_status: str | None
    safe_wal_bytes: int | None
    reader_pid: int | None = None  # the server process streaming the slot


@dataclass(frozen=True, slots=True)
class Shipping:
    """What the daemon recorded: the last batch, call counters, last caught up."""

    commit_lsn: Lsn
    commit_time: datetime
    shipped_at: datetime
    calls_total: int | None
    batches_total: int | None
    calls_last_minute: int | None
    caught_up_at: datetime | None


@dataclass(frozen=True, slots=True)
class Replica:
    """The session holding the slot's lock: the cdc-tracker that reads it."""

    pid: int
    application_name: str
    client_addr: str | None
    backend_start: datetime
    state: str | None


@dataclass(frozen=True, slots=True)
class Status:
    """One look at a slot; ``position`` is None when the slot does not exist.

    ``unshipped_for`` bounds the age of the oldest commit not yet shipped: zero
    when nothing is pending, None when nothing was ever shipped.
    """

    slot: str
    database: str
    taken_at: datetime
    position: SlotPosition | None
    shipping: Shipping | None
    unshipped_for: timedelta | None
    dead_letters: dict[str, int] = field(default_factory=dict)
    replica: Replica | None = None

    @property
    def healthy(self) -> bool:
        """The slot exists and still has the WAL it needs."""
        return self.position is not None and self.position.wal_status != "lost"


def read_status(conn: Connection, slot: str) -> Status:
    """Read the whole status of ``slot`` on ``conn``'s database."""
    with translate_errors(slot):
        row = conn.execute("SELECT current_database(), now()").fetchone()
        assert row is not None
        database, now = str(row[0]), row[1]
        position = _position(conn, slot)
        shipping = _shipping(conn, slot, now)
        letters = _dead_letters(conn, slot)
        replica = holder(conn, slot)
    return Status(
        slot=slot,
        database=database,
        taken_at=now,
        position=position,
        shipping=shipping,
        unshipped_for=_unshipped_for(position, shipping, now),
        dead_letters=letters,
        replica=replica,
    )


def _position(conn: Connection, slot: str) -> SlotPosition | None:
    row = conn.execute(_SLOT_SQL, (slot,)).fetchone()
    if row is None:
        return None
    plugin, confirmed, restart, current, retained, pending, wal_status, safe, pid = row[
        :9
    ]
    database, here = row[9:]
    if confirmed is None:  # a physical slot: no logical position to show
        raise ConfigError(
            f"replication slot '{slot}' is a physical slot, not cdc-tracker's",
            hint="choose the daemon's slot name with --slot or CDC_TRACKER_SLOT",
        )
    if database != here:  # slots are the server's: another database's reader
        raise ConfigError(
            f"replication slot '{slot}' belongs to database '{database}', not '{here}'",
            hint=f"point --dsn at database '{database}' to see that daemon's "
            "status, or name this database's slot with --slot or CDC_TRACKER_SLOT",
        )
    return SlotPosition(
        plugin=str(plugin),
        confirmed=Lsn.parse(confirmed),
        restart=None if restart is None else Lsn.parse(restart),
        current=Lsn.parse(current),
        retained_bytes=retained,
        pending_bytes=max(int(pending), 0),
        wal_status=wal_status,
        safe_wal_bytes=safe,
        reader_pid=pid,
    )


def _shipping(conn: Connection, slot: str, now: datetime) -> Shipping | None:
    exists = conn.execute("SELECT to_regclass('cdc_tracker.checkpoints')").fetchone()
    if exists is None or exists[0] is None:
        return None
    row = conn.execute(_CHECKPOINT_SQL, (slot,)).fetchone()
    if row is None:
        return None
    saved: dict[str, Any] = row[0]
    return Shipping(
        commit_lsn=Lsn.parse(saved["commit_lsn"]),
        commit_time=_time(saved["commit_time"]),
        shipped_at=_time(saved["updated_at"]),
        calls_total=saved.get("calls_total"),
        batches_total=saved.get("batches_total"),
        calls_last_minute=_last_minute(saved, now),
        caught_up_at=_time(saved["caught_up_at"])
        if saved.get("caught_up_at")
        else None,
    )


def _last_minute(saved: dict[str, Any], now: datetime) -> int | None:
    """Calls in the last whole clock minute, from the two minute counters."""
    if "minute_at" not in saved:
        return None
    if saved["minute_at"] is None:
        return 0
    filling = _time(saved["minute_at"])
    this_minute = now.replace(second=0, microsecond=0)
    if filling == this_minute:
        return int(saved["previous_minute_calls"])
    if filling == this_minute - timedelta(minutes=1):
        return int(saved["minute_calls"])
    return 0


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _dead_letters(conn: Connection, slot: str) -> dict[str, int]:
    exists = conn.execute("SELECT to_regclass('cdc_tracker.dead_letters')").fetchone()
    if exists is None or exists[0] is None:
        return {}
    return dict(DeadLetterStore(conn, slot).count_by_reason(Selection()))


def holder(conn: Connection, slot: str) -> Replica | None:
    """The cdc-tracker process holding the slot's lock, if one does."""
    key = slot_lock_id(slot) & 0xFFFFFFFF  # the oid pg_locks shows for an int4
    row = conn.execute(_REPLICA_SQL, (LOCK_CLASS, key)).fetchone()
    if row is None:
        return None
    pid, application, address, started, state = row
    return Replica(int(pid), str(application or ""), address, started, state)


def _unshipped_for(
    position: SlotPosition | None, shipping: Shipping | None, now: datetime
) -> timedelta | None:
    """How old the oldest unshipped commit is, at most.

    Every commit before the last shipped one, and every commit before the daemon
    last found itself caught up, was handled: the oldest one waiting is younger.
    """
    if position is not None and position.pending_bytes == 0:
        return timedelta(0)
    if shipping is None:
        return None
    handled_until = shipping.commit_time
    if shipping.caught_up_at is not None:
        handled_until = max(handled_until, shipping.caught_up_at)
    return max(now - handled_until, timedelta(0))


# -- presentation ---------------------------------------------------------------


def to_document(status: Status) -> dict[str, Any]:
    """The status as plain JSON-ready data (positions as text, times ISO 8601)."""
    position, shipping, replica = status.position, status.shipping, status.replica
    unshipped = status.unshipped_for
    return {
        "slot": status.slot,
        "database": status.database,
        "taken_at": status.taken_at.isoformat(),
        "exists": position is not None,
        "position": None if position is None else {
            "plugin": position.plugin,
            "confirmed_lsn": str(position.confirmed),
            "restart_lsn": None if position.restart is None else str(position.restart),
            "current_lsn": str(position.current),
            "wal_status": position.wal_status,
            "safe_wal_bytes": position.safe_wal_bytes,
            "reader_pid": position.reader_pid,
        },
        "lag": {
            "retained_bytes": None if position is None else position.retained_bytes,
            "pending_bytes": None if position is None else position.pending_bytes,
            "unshipped_at_most_seconds": (
                None if unshipped is None else round(unshipped.total_seconds(), 3)
            ),
        },
        "last_batch": None if shipping is None else {
            "commit_lsn": str(shipping.commit_lsn),
            "commit_time": shipping.commit_time.isoformat(),
            "shipped_at": shipping.shipped_at.isoformat(),
        },
        "calls": {
            "last_minute": None if shipping is None else shipping.calls_last_minute,
            "total": None if shipping is None else shipping.calls_total,
            "batches_total": None if shipping is None else shipping.batches_total,
        },
        "dead_letters": {
            "waiting": sum(status.dead_letters.values()),
            "by_reason": status.dead_letters,
        },
        "active_replica": None if replica is None else {
            "pid": replica.pid,
            "application_name": replica.application_name,
            "client_addr": replica.client_addr,
            "backend_start": replica.backend_start.isoformat(),
            "state": replica.state,
        },
    }  # fmt: skip


def render_json(status: Status) -> str:
    """``to_document`` as one line of JSON."""
    return orjson.dumps(to_document(status)).decode()


def render_table(status: Status) -> str:
    """Two aligned columns, for a person at a terminal."""
    rows = [
        ("slot", f"{status.slot} on {status.database}"),
        *_position_rows(status),
        *_shipping_rows(status),
        ("dead letters", _letters_text(status.dead_letters)),
        ("active replica", _replica_text(status)),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def _position_rows(status: Status) -> list[tuple[str, str]]:
    position = status.position
    shipping = status.shipping
    if position is None and shipping is not None:
        lost = Checkpoint(shipping.commit_lsn, shipping.commit_time)
        return [
            (
                "position",
                f"the slot does not exist, yet it was read up to {lost.describe()}: "
                f"it was lost; {lost.recovery_hint()}",
            )
        ]
    if position is None:
        return [("position", "the slot does not exist ('cdc-tracker run' creates it)")]
    rows = [
        ("position", f"confirmed {position.confirmed}, server at {position.current}"),
        ("WAL retained", _bytes(position.retained_bytes)),
        ("WAL pending", _bytes(position.pending_bytes)),
    ]
    if position.wal_status not in (None, "reserved"):
        rows.append(("WAL status", f"{position.wal_status} (see 'cdc-tracker doctor')"))
    return rows


def _shipping_rows(status: Status) -> list[tuple[str, str]]:
    shipping, now = status.shipping, status.taken_at
    unshipped = status.unshipped_for
    oldest = "unknown" if unshipped is None else f"at most {_age(unshipped)} old"
    if unshipped == timedelta(0):
        oldest = "none: caught up"
    if shipping is None:
        return [("oldest unshipped", oldest), ("last batch", "none shipped yet")]
    if shipping.batches_total == 0:  # the checkpoint of the slot's start only
        started = f"none shipped yet; reading since {shipping.commit_time.isoformat()}"
        return [("oldest unshipped", oldest), ("last batch", started)]
    totals = ""
    if shipping.calls_total is not None:
        totals = (
            f"; {counted(shipping.calls_total, 'call')} in "
            f"{counted(shipping.batches_total or 0, 'batch', 'batches')} in total"
        )
    per_minute = shipping.calls_last_minute
    return [
        ("oldest unshipped", oldest),
        (
            "last batch",
            f"shipped {_age(now - shipping.shipped_at)} ago, up to commit "
            f"{shipping.commit_lsn} of {shipping.commit_time.isoformat()}",
        ),
        (
            "calls/minute",
            f"{'-' if per_minute is None else per_minute} in the last whole "
            f"minute{totals}",
        ),
    ]


def _letters_text(letters: dict[str, int]) -> str:
    if not letters:
        return "none"
    reasons = ", ".join(f"{count} {reason}" for reason, count in letters.items())
    return f"{sum(letters.values())} waiting: {reasons}"


def _replica_text(status: Status) -> str:
    replica = status.replica
    reader = None if status.position is None else status.position.reader_pid
    if replica is None and reader is not None:
        return (
            f"none, yet the slot is streamed by another process (server pid "
            f"{reader}): no cdc-tracker can read it meanwhile"
        )
    if replica is None:
        return "none: no cdc-tracker holds the slot"
    where = replica.client_addr or "local socket"
    since = _age(status.taken_at - replica.backend_start)
    return f"pid {replica.pid} ({replica.application_name}) from {where}, up {since}"


def _bytes(size: int | None) -> str:
    if size is None:
        return "unknown"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit} ({size} bytes)"
    return f"{size} bytes"


def _age(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
