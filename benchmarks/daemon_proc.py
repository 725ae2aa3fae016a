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
        deadline = time.monotonic() + timeout
        while not self.reading.wait(0.1):
            if self.process.poll() is None and time.monotonic() < deadline:
                continue
            tail = "\n".join(self.errors[-20:])
            raise RuntimeError(f"daemon did not start reading:\n{tail}")
        return self.reading_at

    def pids(self) -> list[int]:
        """The daemon's process and its children (the shipping process)."""
        return [self.process.pid, *children(self.process.pid)]

    def peak_rss_mb(self) -> float:
        """The peak resident set so far (VmHWM) of the daemon's process plus
        that of each of its children, in MB: an upper bound of their peak
        together."""
        return sum(_peak_rss_kb(pid) for pid in self.pids()) / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def environment(
    dsn: str, slot: str, receiver_url: str, **settings: str
) -> dict[str, str]:
    """The environment of a daemon (or replay) on ``slot`` with the example rulebook;
    ``settings`` adds ``CDC_TRACKER_*`` variables, e.g. ``poll_interval="0.2"``."""
    return {
        **os.environ,
        "CDC_TRACKER_DSN": dsn,
        "CDC_TRACKER_SLOT": slot,
        "CDC_TRACKER_RULEBOOK": str(EXAMPLES / "rulebook.yaml"),
        "RUDDERSTACK_DATA_PLANE_URL": receiver_url,
        "RUDDERSTACK_WRITE_KEY": WRITE_KEY,
        "CDC_TRACKER_LOG_FORMAT": "json",
        "CDC_TRACKER_LOG_LEVEL": "info",
        # Metrics are not measured; a daemon running beside may hold the port.
        "CDC_TRACKER_METRICS_ADDRESS": "off",
        **{f"CDC_TRACKER_{name.upper()}": value for name, value in settings.items()},
    }


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU the processes used so far (0 for one that is gone)."""
    return sum(_cpu(Path(f"/proc/{pid}/stat")) for pid in pids)


def main_thread_cpu_seconds(pid: int) -> float:
    """The CPU of the process's main thread alone (its task id is its pid)."""
    return _cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def _cpu(stat: Path) -> float:
    try:
        fields = stat.read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_backends(conn: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    """The server processes of every other client of this database, the
    walsender streaming a slot included."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type IN ('client backend', 'walsender') "
        "AND pid <> pg_backend_pid()"
    ).fetchall()
    return [int(str(row[0])) for row in rows]


def start_daemon(dsn: str, slot: str, receiver_url: str, **settings: str) -> DaemonRun:
    """Start ``python -m cdc_tracker run`` on ``slot`` (see ``environment``)."""
    env = environment(dsn, slot, receiver_url, **settings)
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
        elif not run.reading.is_set() or b'"level": "error"' in line:
            # Start-up output is kept whole: a traceback spans many lines.
            run.errors.append(line.decode(errors="replace").rstrip())


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
            tail = "\n".join(run.errors[-20:])
            raise RuntimeError(f"daemon exited early:\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"daemon not at {target} after {timeout} s")
        time.sleep(0.01)
    return time.monotonic()


def replay(dsn: str, receiver_url: str, since: str) -> float:
    """Seconds for ``python -m cdc_tracker replay --since`` to finish (exit 0)."""
    env = environment(dsn, "bench_replay", receiver_url)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cdc_tracker", "replay", "--since", since],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=3600,
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-10:]
        raise RuntimeError("replay failed:\n" + "\n".join(tail))
    return elapsed
