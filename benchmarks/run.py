"""``./dev bench``: cdc-tracker against PostgreSQL's own decoding speed.

On a throwaway PostgreSQL: write the workload (mixed transactions of 1, 100 and
10,000 changes, then one of 1,000,000; ``--scale`` shrinks it), measure the two
baselines (the server decoding for ``count(*)``, ``pg_recvlogical`` to /dev/null),
run the daemon end to end into a counting receiver (and the receiver alone), take
the daemon's peak RSS through the big transaction and the delay from commit to
acknowledgement under a steady load, then print the table (Markdown).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import structlog

from benchmarks import baselines, delay, receiving
from benchmarks.daemon_proc import (
    EXAMPLES,
    cpu_seconds,
    main_thread_cpu_seconds,
    replay,
    server_backends,
    start_daemon,
    wait_confirmed,
)
from benchmarks.table import Row, render
from benchmarks.workload import (
    Generator,
    Sizes,
    Written,
    create_slot,
    flush_lsn,
    seed,
    write_workload,
)
from cdc_tracker import compiled
from cdc_tracker.testing.postgres import ThrowawayPostgres, find_install

SLOTS = ("bench_sql", "bench_recv", "bench_daemon")
# Server settings: room for the big transaction's WAL without forced checkpoints.
SERVER_SETTINGS = {"max_wal_size": "8GB", "checkpoint_timeout": "30min"}


@dataclass
class Results:
    written: Written
    sql_s: float
    sql_after_s: float  # the same, measured again right after the daemon's run
    recv_s: float
    daemon_s: float
    calls: int
    receiver_alone: float
    rss_before_big: float
    rss_peak: float
    cpu: dict[str, float]  # CPU seconds of each process during the daemon's run
    delays: list[float]
    delay_rate: float
    tuned: tuple[str, list[float], float] | None  # (poll interval, delays, rate)
    replay_rate: float | None
    replay_note: str


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # stdout carries the table alone: the throwaway server's log lines go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    sizes = Sizes.scaled(args.scale)
    if args.delay_seconds is None:
        args.delay_seconds = max(5.0, 30.0 * args.scale)
    _say(f"workload: {sizes} (scale {args.scale})")
    with ThrowawayPostgres(settings=SERVER_SETTINGS) as server:
        dsn = server.create_database("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((EXAMPLES / "schema.sql").read_text())
            results = _measure(conn, dsn, sizes, args)
        version = server_version(dsn)
    sys.stdout.write(render(_rows(results), _header(args, results, version)))
    return 0


def _measure(
    conn: psycopg.Connection[tuple[object, ...]],
    dsn: str,
    sizes: Sizes,
    args: argparse.Namespace,
) -> Results:
    generator = seed(conn)
    for slot in SLOTS:
        create_slot(conn, slot)
    written = write_workload(generator, sizes)
    _say(f"wrote {written.changes} changes in {written.seconds:.1f} s")

    sql_s = min(baselines.sql_peek(dsn, "bench_sql", written.end)[0] for _ in range(2))
    _say(f"SQL peek: {sql_s:.2f} s")
    recv_s = baselines.recvlogical(
        find_install().bindir, dsn, "bench_recv", written.end
    )
    _say(f"pg_recvlogical: {recv_s:.2f} s")

    receiver = receiving.start_receiver()
    try:
        alone = receiving.receiver_alone(receiver)
        _say(f"receiver alone: {alone:.0f} calls/s")
        daemon_s, rss_before, rss_peak, cpu = _daemon_run(
            conn, dsn, receiver, written, args.py_spy
        )
        calls = int(receiver.stats()["calls"])
    finally:
        receiver.stop()
    _say(f"daemon: {daemon_s:.2f} s, {calls} calls, peak RSS {rss_peak:.0f} MB")
    # The machine's speed drifts within minutes: a second look at the baseline
    # shows how far it moved while the daemon ran.
    sql_after_s = baselines.sql_peek(dsn, "bench_sql", written.end)[0]
    _say(f"SQL peek after: {sql_after_s:.2f} s")

    delays, rate = _delay_run(conn, dsn, generator, args.delay_seconds)
    tuned = None
    if args.poll_interval:
        tuned_delays, tuned_rate = _delay_run(
            conn, dsn, generator, args.delay_seconds, args.poll_interval
        )
        tuned = (args.poll_interval, tuned_delays, tuned_rate)
    return Results(
        written, sql_s, sql_after_s, recv_s, daemon_s, calls, alone, rss_before,
        rss_peak, cpu, delays, rate, tuned, *_replay(conn, dsn),
    )  # fmt: skip


def _daemon_run(
    conn: psycopg.Connection[tuple[object, ...]],
    dsn: str,
    receiver: receiving.Receiver,
    written: Written,
    py_spy: Path | None,
) -> tuple[float, float, float, dict[str, float]]:
    """Seconds from reading the slot to having it advanced past the workload, the
    peak RSS before the big transaction and through it, and the CPU seconds the
    daemon, its server backends and the receiver used meanwhile."""
    run = start_daemon(dsn, "bench_daemon", receiver.url)
    spy = _spy(run.process.pid, py_spy) if py_spy else None
    try:
        started = run.wait_reading()
        processes = {
            "daemon": run.pids(),  # with its shipping process
            "its server backends": server_backends(conn),
            "receiver": [receiver.process.pid],
        }
        cpu_before = {name: cpu_seconds(pids) for name, pids in processes.items()}
        main_before = main_thread_cpu_seconds(run.process.pid)
        delivery = processes["daemon"][1:]
        delivery_before = cpu_seconds(delivery)
        wait_confirmed(conn, "bench_daemon", written.before_big, run)
        rss_before = run.peak_rss_mb()
        finished = wait_confirmed(conn, "bench_daemon", written.end, run)
        rss_peak = run.peak_rss_mb()
        cpu = {
            name: cpu_seconds(pids) - cpu_before[name]
            for name, pids in processes.items()
        }
        # Parts of the daemon's: its main thread, its delivery process, and its
        # other threads (the one reading the stream ahead, the one feeding the
        # delivery process).
        main = main_thread_cpu_seconds(run.process.pid) - main_before
        cpu["daemon main thread"] = main
        cpu["daemon delivery process"] = cpu_seconds(delivery) - delivery_before
        cpu["daemon other threads"] = (
            cpu["daemon"] - main - cpu["daemon delivery process"]
        )
    finally:
        run.stop()
        if spy is not None:
            spy.wait(timeout=120)
    return finished - started, rss_before, rss_peak, cpu


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--format", "raw",
         "--rate", "200", "--output", str(out)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _delay_run(
    conn: psycopg.Connection[tuple[object, ...]],
    dsn: str,
    generator: Generator,
    seconds: float,
    poll_interval: str | None = None,
) -> tuple[list[float], float]:
    """Delays (ms) from commit to acknowledgement under a steady 1,000 changes/s,
    with the daemon's default settings (but ``poll_interval`` when given)."""
    slot = "bench_delay" if poll_interval is None else "bench_delay_tuned"
    create_slot(conn, slot)
    receiver = receiving.start_receiver(delays=True)
    tuning = {} if poll_interval is None else {"poll_interval": poll_interval}
    run = start_daemon(dsn, slot, receiver.url, **tuning)
    try:
        run.wait_reading()
        rate = delay.steady_load(generator, 1_000, seconds)
        wait_confirmed(conn, slot, flush_lsn(conn), run, timeout=60)
        delays = [float(value) for value in receiver.stats()["delays_ms"]]
    finally:
        run.stop()
        receiver.stop()
    _say(f"delay: {len(delays)} calls at {rate:.0f} changes/s")
    return delays, rate


def _replay(
    conn: psycopg.Connection[tuple[object, ...]], dsn: str
) -> tuple[float | None, str]:
    """Replay rows/s over every row of both tables, or why it was not measured."""
    done = subprocess.run(
        [sys.executable, "-m", "cdc_tracker", "replay", "--help"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        return None, "not available"
    row = conn.execute(
        "SELECT (SELECT count(*) FROM merchants) + (SELECT count(*) FROM payouts)"
    ).fetchone()
    rows = int(str(row[0])) if row else 0
    receiver = receiving.start_receiver()
    try:
        seconds = replay(dsn, receiver.url, "2000-01-01")
        calls = int(receiver.stats()["calls"])
    finally:
        receiver.stop()
    _say(f"replay: {rows} rows, {calls} calls in {seconds:.1f} s")
    return rows / seconds, f"{rows:,} rows, {calls:,} calls"


def _rows(r: Results) -> list[Row]:
    changes = r.written.changes
    sql = changes / r.sql_s
    sql_after = changes / r.sql_after_s
    recv = changes / r.recv_s
    ours = changes / r.daemon_s
    return [
        Row(
            "server decoding, SQL `count(*)` of peek",
            f"{sql:,.0f} changes/s",
            f"{sql_after:,.0f} changes/s right after the end-to-end run",
        ),
        Row("server decoding, `pg_recvlogical` to /dev/null", f"{recv:,.0f} changes/s"),
        Row(
            "cdc-tracker end to end",
            f"{ours:,.0f} changes/s ({r.calls / r.daemon_s:,.0f} calls/s)",
            f"{ours / sql:.2f}x SQL ({ours / sql_after:.2f}x the one after), "
            f"{ours / recv:.2f}x pg_recvlogical",
            ">= 0.5x SQL",
            ours / sql >= 0.5,
        ),
        Row(
            "CPU during the end-to-end run, per change",
            ", ".join(
                f"{name} {seconds / changes * 1e6:.1f} µs"
                for name, seconds in r.cpu.items()
            ),
            f"{_busy(r.cpu) / r.daemon_s:.2f} of the machine's "
            f"{os.cpu_count()} cores busy",
        ),
        Row(
            "counting receiver alone",
            f"{r.receiver_alone:,.0f} calls/s",
            f"{r.receiver_alone / (r.calls / r.daemon_s):.1f}x what cdc-tracker sent",
        ),
        Row(
            f"peak RSS through the {r.written.changes - r.written.mixed_changes:,}"
            "-change transaction",
            f"{r.rss_peak:.0f} MB",
            f"{r.rss_before_big:.0f} MB before it",
            "< 200 MB",
            r.rss_peak < 200,
        ),
        _delay_row(r.delays, r.delay_rate, "default settings"),
        *(
            [_delay_row(r.tuned[1], r.tuned[2], f"poll_interval {r.tuned[0]} s")]
            if r.tuned
            else []
        ),
        Row(
            "replay of every row of both tables",
            "not available"
            if r.replay_rate is None
            else f"{r.replay_rate:,.0f} rows/s",
            r.replay_note if r.replay_rate is not None else "",
            ">= 20k rows/s",
            None if r.replay_rate is None else r.replay_rate >= 20_000,
        ),
    ]


def _busy(cpu: dict[str, float]) -> float:
    """CPU seconds of every process ("daemon ..." entries are parts of the
    daemon's: its main thread, its delivery process, its other threads)."""
    return sum(
        seconds for name, seconds in cpu.items() if not name.startswith("daemon ")
    )


def _p50_p99(delays: list[float]) -> tuple[float, float]:
    if not delays:
        return float("nan"), float("nan")
    return delay.percentile(delays, 0.50), delay.percentile(delays, 0.99)


def _delay_row(delays: list[float], rate: float, settings: str) -> Row:
    p50, p99 = _p50_p99(delays)
    return Row(
        f"delay commit -> ack at {rate:,.0f} changes/s, p50 / p99",
        f"{p50:,.0f} / {p99:,.0f} ms",
        f"{len(delays):,} calls, {settings}",
        "p99 < 1 s",
        p99 < 1000,
    )


def _header(args: argparse.Namespace, r: Results, version: str) -> list[str]:
    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"machine: {_cpu()}, {_cores()} cores, {_memory_gb():.0f} GB RAM, "
        f"{platform.system()} {platform.release()}",
        f"software: PostgreSQL {version}, wal2json {_wal2json()}, "
        f"Python {platform.python_version()}, compiled hot path {_compiled()}",
        f"workload (scale {args.scale}): {r.written.changes:,} changes in "
        f"{r.written.transactions:,} transactions; {r.calls:,} calls made",
    ]


def _compiled() -> str:
    absent = compiled.missing()
    return f"not built ({', '.join(absent)})" if absent else "built"


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def _memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _wal2json() -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "postgresql-15-wal2json"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.split("-")[0] if done.returncode == 0 else "?"


def _say(message: str) -> None:
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./dev bench",
        description="Measure cdc-tracker against PostgreSQL's own decoding speed.",
        epilog="examples: ./dev bench --scale 0.05   (under a minute)\n"
        "          ./dev bench                (the full run, a few minutes)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="fraction of the full workload (1,222,000 changes); default 1",
    )
    parser.add_argument(
        "--delay-seconds",
        type=float,
        help="how long the steady 1,000 changes/s load runs "
        "(default 30 x scale, at least 5)",
    )
    parser.add_argument(
        "--poll-interval",
        metavar="SECONDS",
        help="also measure the delay with this poll interval",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="FILE",
        help="record the daemon with py-spy (collapsed stacks) into FILE",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
