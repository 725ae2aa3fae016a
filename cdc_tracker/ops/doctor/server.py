"""Checks of the server itself: version, WAL settings, the wal2json plugin, headroom.

The wal2json probe creates a temporary logical slot and decodes nothing through it;
it is the only way to learn that the plugin loads and speaks format 2, since
wal2json is an output plugin, not an extension. Its psycopg errors are read here,
where the doctor meets the server, and never leave this module.
"""

from __future__ import annotations

import os

import psycopg
from psycopg import errors as pgerrors

from cdc_tracker.errors import CdcTrackerError
from cdc_tracker.ops.doctor.context import Context
from cdc_tracker.ops.doctor.result import Finding, failed, failed_on, passed, warned
from cdc_tracker.source.stream import probe
from cdc_tracker.source.wal2json import PLUGIN_OPTIONS

MIN_VERSION = 130_000  # wal_status and max_slot_wal_keep_size, which we rely on
PROBE_TIMEOUT = "10s"
PLUGIN = "wal2json"  # the output plugin the probe asks the server for
_RESTART = "then restart PostgreSQL"


def server_version(ctx: Context) -> Finding:
    """PostgreSQL 13 or later."""
    number, text = ctx.row(
        "SELECT current_setting('server_version_num')::int, "
        "current_setting('server_version')"
    )
    name = "server version"
    shown = f"PostgreSQL {str(text).split()[0]}"
    if number < MIN_VERSION:
        return failed(
            name,
            f"{shown}; cdc-tracker needs 13 or later",
            "upgrade PostgreSQL (13+ reports slot health and can bound slot WAL)",
        )
    return passed(name, shown)


def wal_level(ctx: Context) -> Finding:
    """``wal_level = logical``: without it nothing can be decoded."""
    (level,) = ctx.row("SELECT current_setting('wal_level')")
    if level != "logical":
        return failed(
            "wal_level",
            f"wal_level is {level}; logical decoding needs logical",
            f"ALTER SYSTEM SET wal_level = logical; {_RESTART}",
        )
    return passed("wal_level", "logical")


def wal2json(ctx: Context) -> Finding:
    """The plugin loads and accepts our format-2 options, on a temporary slot."""
    name = "wal2json"
    probe = f"cdc_tracker_doctor_{os.getpid()}"
    conn = ctx.db()
    try:
        # A temporary slot vanishes on error or disconnect, so nothing is left over.
        with conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = '{PROBE_TIMEOUT}'")
            conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, %s, true)",
                (probe, PLUGIN),
            )
            options = ", ".join(["%s"] * len(PLUGIN_OPTIONS))
            conn.execute(
                "SELECT count(*) FROM pg_logical_slot_peek_changes("
                f"%s, NULL, 1, {options})",
                (probe, *PLUGIN_OPTIONS),
            )
        conn.execute("SELECT pg_drop_replication_slot(%s)", (probe,))
    except psycopg.Error as exc:
        return _probe_failed(name, exc, conn.info.server_version // 10_000)
    return passed(name, "loads and speaks format 2 (probed with a temporary slot)")


def _probe_failed(name: str, exc: psycopg.Error, major: int) -> Finding:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.sqlstate
    install = (
        f"install wal2json 2.x for this server (Debian: postgresql-{major}-wal2json)"
    )
    if isinstance(exc, pgerrors.UndefinedFile):
        return failed(name, f"the plugin is not installed: {message}", install)
    if isinstance(exc, pgerrors.FeatureNotSupported | pgerrors.InvalidParameterValue):
        return failed(name, f"the plugin is older than 2.x: {message}", install)
    if isinstance(exc, pgerrors.QueryCanceled):
        return warned(
            name,
            f"not verified: a temporary slot waited over {PROBE_TIMEOUT} for "
            "running transactions",
            "run the doctor again when long transactions have finished",
        )
    return warned(
        name,
        f"not verified: the server refused a temporary slot: {message}",
        "see the wal_level, replication privilege and slot headroom checks",
    )


def slot_headroom(ctx: Context) -> Finding:
    """A free ``max_replication_slots`` entry when our slot is still to be made."""
    limit, used, ours = ctx.row(
        "SELECT current_setting('max_replication_slots')::int, "
        "(SELECT count(*) FROM pg_replication_slots), "
        "EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
        (ctx.settings.slot,),
    )
    name = "replication slots"
    detail = f"{used} of max_replication_slots {limit} in use"
    if not ours and used >= limit:
        inactive = [
            str(slot)
            for (slot,) in ctx.rows(
                "SELECT slot_name FROM pg_replication_slots WHERE NOT active ORDER BY 1"
            )
        ]
        drop = f"; or drop an unused one: {', '.join(inactive)}" if inactive else ""
        return failed(
            name,
            f"{detail}: none left for slot '{ctx.settings.slot}'",
            f"ALTER SYSTEM SET max_replication_slots = {limit + 2}; {_RESTART}{drop}",
        )
    return passed(name, detail)


def sender_headroom(ctx: Context) -> Finding:
    """A WAL sender for cdc-tracker's stream, when it is not streaming already."""
    limit, used, ours = ctx.row(
        "SELECT current_setting('max_wal_senders')::int, "
        # pg_stat_replication lists every sender to any role; pg_stat_activity
        # hides other roles' backend types from one without pg_read_all_stats.
        "(SELECT count(*) FROM pg_stat_replication), "
        "EXISTS (SELECT 1 FROM pg_replication_slots "
        "WHERE slot_name = %s AND active)",
        (ctx.settings.slot,),
    )
    name = "wal senders"
    detail = f"{used} of max_wal_senders {limit} in use"
    if not ours and used >= limit:
        return failed(
            name,
            f"{detail}: none left for cdc-tracker, which streams through one",
            f"ALTER SYSTEM SET max_wal_senders = {limit + 2}; {_RESTART}",
        )
    return passed(name, f"{detail} (cdc-tracker uses one)")


def replication_connection(ctx: Context) -> Finding:
    """A replication connection opens, as the daemon's stream opens one."""
    name = "replication connection"
    ctx.db()  # no database connection: nothing to learn here either
    try:
        system = probe(ctx.settings.require_dsn())
    except CdcTrackerError as exc:
        return failed_on(
            name,
            exc,
            "the role needs REPLICATION, and pg_hba.conf must let it in "
            "(logical replication connections match database entries)",
            prefix="refused: ",
        )
    return passed(name, f"opens (system {system})")


def wal_keep_limit(ctx: Context) -> Finding:
    """``max_slot_wal_keep_size`` bounds the WAL an abandoned slot can pin."""
    (size,) = ctx.row("SELECT current_setting('max_slot_wal_keep_size')")
    name = "max_slot_wal_keep_size"
    if size == "-1":
        return warned(
            name,
            "unlimited: a slot nobody reads keeps WAL until the disk is full",
            f"ALTER SYSTEM SET {name} = '50GB'; SELECT pg_reload_conf();  "
            "(size it to the outage you want to survive)",
        )
    return passed(name, str(size))
