"""Run every check in order and collect the findings."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from cdc_tracker import compiled
from cdc_tracker.errors import CdcTrackerError
from cdc_tracker.ops.doctor import access, destination, rulebook, server, slot
from cdc_tracker.ops.doctor.context import Context, NotChecked
from cdc_tracker.ops.doctor.result import Finding, failed, failed_on, passed, warned
from cdc_tracker.settings import Settings
from cdc_tracker.source.slot import connect, translate_errors

log = structlog.get_logger(__name__)

Check = Callable[[Context], Finding]

# (name, check) in the order an operator fixes things: server, role, slot, rules,
# destination. The rulebook check fills ctx.rulebook for the ones after it.
CHECKS: tuple[tuple[str, Check], ...] = (
    ("server version", server.server_version),
    ("wal_level", server.wal_level),
    ("replication privilege", access.replication_privilege),
    ("wal2json", server.wal2json),
    ("replication slots", server.slot_headroom),
    ("wal senders", server.sender_headroom),
    ("replication connection", server.replication_connection),
    ("max_slot_wal_keep_size", server.wal_keep_limit),
    ("slot", slot.replication_slot),
    ("state schema", access.state_schema),
    ("rulebook", rulebook.rulebook),
    ("rulebook schema", rulebook.schema_fit),
    ("replica identity", rulebook.replica_identity),
    ("table grants", access.table_grants),
    ("destination", destination.destination),
    ("destination health", destination.health),
    ("write key", destination.write_key),
    ("compiled hot path", lambda ctx: compiled_hot_path()),
)


def compiled_hot_path() -> Finding:
    """Whether rows are read and calls written in C (see cdc_tracker.compiled)."""
    name = "compiled hot path"
    absent = compiled.missing()
    if absent:
        return warned(
            name,
            f"not built ({', '.join(absent)}): every change takes the Python "
            "path, at about three times the CPU",
            compiled.HOW_TO_BUILD,
        )
    return passed(name, "change rows are read and calls written in C")


def run_doctor(
    settings: Settings, checks: tuple[tuple[str, Check], ...] = CHECKS
) -> list[Finding]:
    """Every finding, in order: the database connection first, then ``checks``.

    Never raises for what it finds: a check that errors is a failure naming the
    error, and a check whose prerequisite failed is a warning pointing at it.
    """
    ctx = Context(settings)
    findings = [_connect(ctx)]
    try:
        for name, check in checks:
            findings.append(_run_one(ctx, name, check))
    finally:
        if ctx.conn is not None:
            ctx.conn.close()
    return findings


def _connect(ctx: Context) -> Finding:
    name = "database"
    try:
        conn = connect(ctx.settings.require_dsn())
    except CdcTrackerError as exc:
        return failed_on(
            name, exc, "check the DSN (--dsn or CDC_TRACKER_DSN): host, port, user"
        )
    with translate_errors(ctx.settings.slot):
        conn.execute("SET application_name = 'cdc-tracker doctor'")
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    ctx.conn = conn
    assert row is not None
    return passed(name, f"connected to {row[1]} as {row[0]}")


def _run_one(ctx: Context, name: str, check: Check) -> Finding:
    try:
        return check(ctx)
    except NotChecked as skipped:
        return warned(
            name, f"not checked: {skipped.reason}", f"see '{skipped.see}' above"
        )
    except CdcTrackerError as exc:
        log.debug("check failed", check=name, error=str(exc))
        return failed(name, f"could not check: {exc.what}", exc.hint or "see the error")
