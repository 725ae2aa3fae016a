"""The replication slot: there (or to be made), wal2json, this database, healthy."""

from __future__ import annotations

from cdc_tracker.daemon.checkpoint import Checkpoint, CheckpointStore
from cdc_tracker.ops.doctor.context import Context
from cdc_tracker.ops.doctor.result import Finding, failed, passed, warned
from cdc_tracker.ops.status import holder

_SLOT_SQL = (
    "SELECT plugin, slot_type, database, current_database(), wal_status, "
    "active_pid FROM pg_replication_slots WHERE slot_name = %s"
)


def replication_slot(ctx: Context) -> Finding:
    """Fails on a slot cdc-tracker cannot read; warns when it is yet to be created."""
    slot = ctx.settings.slot
    found = ctx.rows(_SLOT_SQL, (slot,))
    name = "slot"
    if not found:
        shipped = _checkpoint(ctx)
        if shipped is not None:
            return failed(
                name,
                f"replication slot '{slot}' does not exist, but cdc-tracker shipped "
                f"up to {shipped.describe()}: changes committed since were not read",
                shipped.recovery_hint(),
            )
        # Nothing to do: a warning would make doctor fail every first set-up.
        return passed(
            name,
            f"replication slot '{slot}' does not exist yet: 'cdc-tracker run' "
            "creates it (changes committed before then are not read)",
        )
    plugin, kind, database, current, wal_status, reader = found[0]
    other = "choose another slot name with CDC_TRACKER_SLOT"
    if kind != "logical":
        return failed(name, f"slot '{slot}' is a {kind} slot, not wal2json", other)
    if plugin != "wal2json":
        return failed(name, f"slot '{slot}' uses plugin {plugin}, not wal2json", other)
    if database != current:
        return failed(
            name, f"slot '{slot}' belongs to database {database}, not {current}", other
        )
    if wal_status == "lost":
        shipped = _checkpoint(ctx)
        return failed(
            name,
            f"slot '{slot}' is invalidated (wal_status lost): WAL it needed is gone",
            shipped.recovery_hint()
            if shipped is not None
            else "recreate it with 'cdc-tracker run --recreate-slot', then "
            "backfill with 'cdc-tracker replay --since'",
        )
    if reader is not None and holder(ctx.db(), slot) is None:
        return failed(
            name,
            f"slot '{slot}' is streamed by another process (server pid {reader}): "
            "no cdc-tracker can read it meanwhile",
            f"stop that reader (SELECT pg_terminate_backend({reader}) ends it), or "
            "give cdc-tracker a slot of its own with CDC_TRACKER_SLOT",
        )
    if wal_status == "unreserved":
        return warned(
            name,
            f"slot '{slot}' is about to lose WAL it needs (wal_status unreserved)",
            "start cdc-tracker now, or raise max_slot_wal_keep_size",
        )
    return passed(name, f"'{slot}' uses wal2json (wal_status {wal_status})")


def _checkpoint(ctx: Context) -> Checkpoint | None:
    """The slot's checkpoint, if cdc-tracker ever shipped from it."""
    (table,) = ctx.row("SELECT to_regclass('cdc_tracker.checkpoints') IS NOT NULL")
    if not table:
        return None
    return CheckpointStore(ctx.db(), ctx.settings.slot).load()
