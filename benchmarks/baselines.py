"""What PostgreSQL itself does with the slot: the ceiling for any wal2json consumer.

Both baselines ask wal2json for exactly what cdc-tracker asks for (the same plugin
options, the same tables and message prefix), so the only difference left is what
happens to the rows once decoded.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psycopg

from cdc_tracker.model import Lsn
from cdc_tracker.source.wal2json import MESSAGE_PREFIX, PLUGIN_OPTIONS

TABLES = "public.merchants,public.payouts"

_PEEK_COUNT_SQL = (
    "SELECT count(*) FROM pg_logical_slot_peek_changes(%s, %s::pg_lsn, NULL, "
    + ", ".join(["%s"] * (len(PLUGIN_OPTIONS) + 4))
    + ")"
)


def plugin_options() -> list[tuple[str, str]]:
    """The options cdc-tracker passes on every peek, as (name, value) pairs."""
    pairs = list(zip(PLUGIN_OPTIONS[::2], PLUGIN_OPTIONS[1::2], strict=True))
    return [*pairs, ("add-tables", TABLES), ("add-msg-prefixes", MESSAGE_PREFIX)]


def sql_peek(dsn: str, slot: str, upto: Lsn) -> tuple[float, int]:
    """Seconds for the server to decode the slot up to ``upto`` and count the rows."""
    options = [item for pair in plugin_options() for item in pair]
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        row = conn.execute(_PEEK_COUNT_SQL, (slot, str(upto), *options)).fetchone()
        elapsed = time.perf_counter() - started
    assert row is not None
    return elapsed, int(str(row[0]))


def recvlogical(bindir: Path, dsn: str, slot: str, upto: Lsn) -> float:
    """Seconds for ``pg_recvlogical`` to stream the slot up to ``upto`` to /dev/null."""
    command = [
        str(bindir / "pg_recvlogical"),
        "--dbname", dsn,
        "--slot", slot,
        "--start",
        "--no-loop",
        "--endpos", str(upto),
        "--file", "/dev/null",
    ]  # fmt: skip
    for name, value in plugin_options():
        command += ["--option", f"{name}={value}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, timeout=3600, capture_output=True)
    return time.perf_counter() - started
