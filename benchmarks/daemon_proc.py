"""Run ``python -m cdc_tracker run`` as a child process and watch it work.

The daemon is the real one, started the way an operator starts it, so its memory is
its own (``VmHWM`` of its process) and it shares no GIL with the receiver.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from cdc_tracker.model import Lsn

EXAMPLES = Path(__file__).resolve().parent.parent / "cdc_tracker" / "examples"
WRITE_KEY = "bench-write-key"


@dataclass
class DaemonRun:
    """A running daemon: its process, and when it started reading the slot."""

    process: subprocess.Popen[bytes]
    reading: threading.Event = field(default_factory=threading.Event)
    reading_at: float = 0.0
    errors: list[str] = field(default_factory=list)

    def wait_reading(self, timeout: float = 60.0) -> float:
        """Wait until the daemon reads the slot; return the monotonic time it did."""
        if not self.reading.wait(timeout):
            raise RuntimeError(f"daemon did not start reading: {self.errors[-5:]}")
        return self.reading_at

    def peak_rss_mb(self) -> float:
        """The process's peak resident set so far (VmHWM), in MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_daemon(dsn: str, slot: str, receiver_url: str, **settings: str) -> DaemonRun:
    """Start the daemon on ``slot`` with the example rulebook and default settings
    (``settings`` adds ``CDC_TRACKER_*`` variables, e.g. ``POLL_INTERVAL="0.2"``)."""
    env = {
        **os.environ,
        "CDC_TRACKER_DSN": dsn,
        "CDC_TRACKER_SLOT": slot,
        "CDC_TRACKER_RULEBOOK": str(EXAMPLES / "rulebook.yaml"),
        "RUDDERSTACK_DATA_PLANE_URL": receiver_url,
        "RUDDERSTACK_WRITE_KEY": WRITE_KEY,
        "CDC_TRACKER_LOG_FORMAT": "json",
        "CDC_TRACKER_LOG_LEVEL": "info",
        **{f"CDC_TRACKER_{name.upper()}": value for name, value in settings.items()},
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cdc_tracker", "run"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    run = DaemonRun(process)
    threading.Thread(target=_watch_log, args=(run,), daemon=True).start()
    return run


def _watch_log(run: DaemonRun) -> None:
    assert run.process.stderr is not None
    for line in run.process.stderr:
        if b'"reading slot"' in line and not run.reading.is_set():
            run.reading_at = time.monotonic()
            run.reading.set()
        elif b'"level": "error"' in line or b"Traceback" in line:
            run.errors.append(line.decode(errors="replace").strip())


def confirmed(conn: psycopg.Connection[tuple[object, ...]], slot: str) -> Lsn:
    row = conn.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
        "WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    assert row is not None
    assert row[0] is not None
    return Lsn.parse(str(row[0]))


def wait_confirmed(
    conn: psycopg.Connection[tuple[object, ...]],
    slot: str,
    target: Lsn,
    run: DaemonRun,
    timeout: float = 3600.0,
) -> float:
    """Wait until the slot is advanced to ``target``; return the monotonic time."""
    deadline = time.monotonic() + timeout
    while confirmed(conn, slot) < target:
        if run.process.poll() is not None:
            raise RuntimeError(f"daemon exited early: {run.errors[-5:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"daemon not at {target} after {timeout} s")
        time.sleep(0.01)
    return time.monotonic()
