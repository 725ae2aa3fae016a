"""``cdc-tracker run`` as a real process: dry run, SIGTERM, exit codes, logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from cdc_tracker.model import Lsn
from cdc_tracker.testing._postgres_server import free_port
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import (
    WRITE_KEY,
    create_slot,
    flush_lsn,
    running_daemon,
    settings_for,
    slot_exists,
    slot_position,
    sql,
    wait_until,
)

INSERT = (
    "insert into merchants (shop_domain, owner_name, plan_name) "
    "values ('a.myshopify.com', 'Ada', 'basic')"
)


def _env(db: str, receiver: FakeRudderStack, rulebook: Path) -> dict[str, str]:
    settings = settings_for(db, receiver, rulebook)
    return {
        **os.environ,
        "CDC_TRACKER_DSN": db,
        "CDC_TRACKER_SLOT": settings.slot,
        "CDC_TRACKER_RULEBOOK": str(rulebook),
        "RUDDERSTACK_DATA_PLANE_URL": receiver.url,
        "RUDDERSTACK_WRITE_KEY": WRITE_KEY,
        "CDC_TRACKER_POLL_INTERVAL": "0.1",
        "CDC_TRACKER_LOG_FORMAT": "json",
        "CDC_TRACKER_METRICS_ADDRESS": "127.0.0.1:0",
    }


class Process:
    """A cdc-tracker subprocess whose output lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc_tracker", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        pairs = ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        self.readers = [
            threading.Thread(target=_drain, args=pair, daemon=True) for pair in pairs
        ]
        for thread in self.readers:
            thread.start()

    def close(self) -> None:
        self.proc.wait(timeout=20)
        for thread in self.readers:
            thread.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def log_events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in list(self.stderr) if line.startswith("{")]

    def wait_for_log(self, event: str, timeout: float = 20) -> None:
        wait_until(
            lambda: any(e.get("event") == event for e in self.log_events()), timeout
        )


def _drain(stream: object, sink: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line.rstrip("\n"))


def _run_to_exit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``cdc-tracker run`` expected to stop by itself (on bad settings)."""
    return subprocess.run(
        [sys.executable, "-m", "cdc_tracker", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
        process.close()


def test_dry_run_prints_calls_as_json_lines_and_advances_nothing(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, processes: list[Process]
) -> None:
    """run --dry-run: calls on stdout, nothing sent, no slot left behind."""
    process = Process(["run", "--dry-run"], _env(db, receiver, example_rulebook))
    processes.append(process)
    process.wait_for_log("reading slot")
    start = slot_position(db)
    sql(db, INSERT)
    wait_until(lambda: len(process.stdout) >= 2, 20)
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=20) == 0
    calls = [json.loads(line) for line in process.stdout]
    assert [c.get("event", c["type"]) for c in calls] == [
        "identify",
        "Merchant Installed",
    ]
    assert all("messageId" in c and "timestamp" in c for c in calls)
    assert receiver.requests == []
    assert start > 0
    # Its slot was temporary: nothing is left behind to hold WAL.
    assert not slot_exists(db)


def test_dry_run_tells_a_call_over_the_size_limit_as_delivery_would(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, processes: list[Process]
) -> None:
    """A call the destination client would refuse (over 32 KB) is not printed as
    if it would go: it is the dead letter a real run makes, logged."""
    process = Process(["run", "--dry-run"], _env(db, receiver, example_rulebook))
    processes.append(process)
    process.wait_for_log("reading slot")
    long_name = "x" * 20_000  # twice in an identify: traits and context.traits
    sql(db, INSERT.replace("'Ada'", f"'{long_name}'"))
    process.wait_for_log("dead letter")
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=20) == 0
    printed = [json.loads(line) for line in process.stdout]
    assert [c.get("event", c["type"]) for c in printed] == ["Merchant Installed"]
    letter = next(e for e in process.log_events() if e["event"] == "dead letter")
    assert letter["reason"].startswith("over the 32000-byte per-call limit: the call")


def test_dry_run_reads_an_existing_slot_without_advancing_it(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, processes: list[Process]
) -> None:
    """With the daemon's slot in place, a dry run shows its backlog, moves nothing."""
    env = _env(db, receiver, example_rulebook)
    create_slot(settings_for(db, receiver, example_rulebook))
    sql(db, INSERT)
    start = slot_position(db)
    process = Process(["run", "--dry-run"], env)
    processes.append(process)
    wait_until(lambda: len(process.stdout) >= 2, 20)
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=20) == 0
    assert slot_position(db) == start
    [stopped] = [e for e in process.log_events() if "stopped" in e["event"]]
    assert stopped["event"] == "dry run stopped; the slot was not moved"
    assert Lsn.parse(stopped["read_upto"]) > start


def test_sigterm_finishes_the_batch_advances_and_exits_zero(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, processes: list[Process]
) -> None:
    """SIGTERM: what was acknowledged is advanced past, exit code 0, a stop line."""
    process = Process(["run"], _env(db, receiver, example_rulebook))
    processes.append(process)
    process.wait_for_log("reading slot")
    sql(db, INSERT)
    written = flush_lsn(db)  # before the daemon's own checkpoint write
    receiver.wait_for_calls(2)
    process.wait_for_log("batch shipped")
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=20) == 0
    events = [e["event"] for e in process.log_events()]
    assert "daemon stopped" in events
    assert slot_position(db) >= written
    batch = next(e for e in process.log_events() if e["event"] == "batch shipped")
    assert batch["calls"] == 2
    assert batch["requests"] == 1  # a batch handed over may take several
    assert WRITE_KEY not in "\n".join(process.stderr)


def test_sigterm_during_an_outage_exits_zero_without_advancing(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, processes: list[Process]
) -> None:
    """Stopping while the destination is down drops nothing: the slot stays put."""
    process = Process(["run"], _env(db, receiver, example_rulebook))
    processes.append(process)
    process.wait_for_log("reading slot")
    receiver.fail_for(120, status=503)
    wait_until(lambda: slot_position(db) >= flush_lsn(db), 10)
    before = slot_position(db)
    sql(db, INSERT)
    wait_until(lambda: len(receiver.requests) >= 2, 20)
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=20) == 0
    assert receiver.calls == []
    assert slot_position(db) == before


def test_bad_settings_exit_2_with_the_field_named(tmp_path: Path) -> None:
    """A bad value is reported with its source; nothing starts."""
    env = {
        **os.environ,
        "CDC_TRACKER_DSN": "host=127.0.0.1",
        "CDC_TRACKER_BATCH_CALLS": "lots",
    }
    result = _run_to_exit(env)
    assert result.returncode == 2
    assert "batch_calls" in result.stderr
    assert "CDC_TRACKER_BATCH_CALLS" in result.stderr


def test_missing_write_key_exits_2_with_a_hint(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    env = _env(db, receiver, example_rulebook)
    del env["RUDDERSTACK_WRITE_KEY"]
    result = _run_to_exit(env)
    assert result.returncode == 2
    assert "no write key" in result.stderr
    assert "RUDDERSTACK_WRITE_KEY" in result.stderr


def test_run_serves_probes_and_reloads_on_sighup(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, processes: list[Process]
) -> None:
    """The daemon answers /healthz and /readyz; SIGHUP reloads the rulebook."""
    port = free_port()
    env = _env(db, receiver, example_rulebook)
    env["CDC_TRACKER_METRICS_ADDRESS"] = f"127.0.0.1:{port}"
    process = Process(["run"], env)
    processes.append(process)
    process.wait_for_log("reading slot")
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/healthz").status_code == 200
    wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 10)
    assert "cdc_tracker_changes_read_total" in httpx.get(f"{base}/metrics").text
    process.proc.send_signal(signal.SIGHUP)
    process.wait_for_log("rulebook reloaded")
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=20) == 0


def test_dry_run_beside_a_running_daemon_reads_a_slot_of_its_own(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, processes: list[Process]
) -> None:
    """The daemon keeps its slot; the dry run shows what happens from now on."""
    settings = settings_for(db, receiver, example_rulebook)
    with running_daemon(settings) as daemon:
        process = Process(["run", "--dry-run"], _env(db, receiver, example_rulebook))
        processes.append(process)
        process.wait_for_log("reading slot")
        sql(db, INSERT)
        daemon.caught_up()
        wait_until(lambda: len(process.stdout) >= 2, 20)
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(timeout=20) == 0
    printed = [json.loads(line)["messageId"] for line in process.stdout]
    assert sorted(printed) == sorted(receiver.message_ids())
    assert slot_exists(db)  # the daemon's slot; the dry run's was temporary


def test_a_dry_run_waiting_for_its_slot_stops_on_sigterm(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, processes: list[Process]
) -> None:
    """A temporary slot waits for every transaction holding an xid: SIGTERM still
    stops the dry run at once, and no slot is left behind."""
    settings = settings_for(db, receiver, example_rulebook)
    with running_daemon(settings), psycopg.connect(db) as holder:
        holder.execute(INSERT)  # open, holding an xid
        process = Process(["run", "--dry-run"], _env(db, receiver, example_rulebook))
        processes.append(process)
        process.wait_for_log("slot in use: the dry run shows changes from now on")
        time.sleep(1)
        assert process.proc.poll() is None  # waiting for the open transaction
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(timeout=5) == 0
        holder.rollback()
    with psycopg.connect(db, autocommit=True) as conn:
        slots = conn.execute(
            "select slot_name from pg_replication_slots "
            "where database = current_database()"
        ).fetchall()
    assert slots == [(settings.slot,)]


def test_a_first_start_waiting_to_create_its_slot_stops_on_sigterm(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, processes: list[Process]
) -> None:
    """Creating the slot waits for every transaction holding an xid (up to 30 s):
    SIGTERM cancels the wait, and the daemon exits at once, leaving no slot."""
    with psycopg.connect(db) as holder:
        holder.execute(INSERT)  # open, holding an xid
        process = Process(["run"], _env(db, receiver, example_rulebook))
        processes.append(process)
        time.sleep(2)
        assert process.proc.poll() is None  # waiting to create the slot
        began = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(timeout=10) == 0
        assert time.monotonic() - began < 5
        holder.rollback()
    assert not slot_exists(db)


def test_output_to_a_full_device_is_an_error_line_not_a_traceback() -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "cdc_tracker", "schema"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr == (
        "cdc-tracker: cannot write the output: No space left on device\n"
    )


def test_the_error_that_stops_run_is_a_json_line_among_json_logs(
    tmp_path: Path,
) -> None:
    """A log shipper reads stderr whole: the line saying why it stopped parses."""
    done = subprocess.run(
        [sys.executable, "-m", "cdc_tracker", "run", "--log-format", "json",
         "--rulebook", str(tmp_path / "absent.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 2
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert lines[-1]["event"] == "stopped on an error"
    assert lines[-1]["error"].endswith(
        "absent.yaml: cannot read rulebook: No such file or directory"
    )
    assert lines[-1]["exit_code"] == 2


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        (
            ["replay", "--since", "1d", "--rate", "0"],
            {"CDC_TRACKER_LOG_FORMAT": "json"},
            "--rate is 0.0; expected calls per second from 0.01 to 1,000,000",
        ),
        (
            ["run"],
            {"CDC_TRACKER_LOG_FORMAT": "json", "CDC_TRACKER_BATCH_CALLS": "0"},
            "setting batch_calls from CDC_TRACKER_BATCH_CALLS is '0'; "
            "expected a positive whole number",
        ),
        (
            ["run", "--log-format", "json"],
            {"CDC_TRACKER_BATCH_CALLS": "0"},
            "setting batch_calls from CDC_TRACKER_BATCH_CALLS is '0'; "
            "expected a positive whole number",
        ),
    ],
)
def test_an_error_before_the_settings_are_read_is_a_json_line_when_asked(
    args: list[str], env: dict[str, str], error: str
) -> None:
    """The settings that configure the logs may be what is wrong: the format
    asked for in the environment or a flag still holds."""
    done = _without_settings(args, env)

    assert done.returncode == 2
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["event"], line["error"]) for line in lines] == [
        ("stopped on an error", error)
    ]


def test_an_error_before_the_settings_are_read_is_a_line_for_people_otherwise() -> None:
    done = _without_settings(["replay", "--since", "1d", "--rate", "0"], {})

    assert done.returncode == 2
    assert done.stderr == (
        "cdc-tracker: --rate is 0.0; expected calls per second from 0.01 to 1,000,000\n"
    )


@pytest.mark.parametrize(
    ("args", "env", "error", "command"),
    [
        (
            ["replay", "--since", "1d", "--rate", "abc"],
            {"CDC_TRACKER_LOG_FORMAT": "json"},
            "argument --rate: invalid float value: 'abc'",
            "replay",
        ),
        (
            ["run", "--poll-interval", "soon", "--log-format", "json"],
            {},
            "argument --poll-interval: invalid float value: 'soon'",
            "run",
        ),
        (
            ["run", "--log-format=json", "--bogus"],
            {},
            "unrecognized arguments: --bogus",
            "run",
        ),
        (  # argparse takes an unambiguous abbreviation: so do we
            ["replay", "--log-form", "json", "--since", "1d", "--page-rows", "x"],
            {},
            "argument --page-rows: invalid int value: 'x'",
            "replay",
        ),
    ],
)
def test_a_usage_error_of_run_or_replay_is_a_json_line_when_asked(
    args: list[str], env: dict[str, str], error: str, command: str
) -> None:
    """argparse's own refusals too: a log shipper reading JSON lines gets one."""
    done = _without_settings(args, env)

    assert done.returncode == 2
    [line] = [json.loads(line) for line in done.stderr.splitlines()]
    assert (line["event"], line["error"], line["exit_code"]) == (
        "bad usage",
        error,
        2,
    )
    assert line["hint"] == f"see 'cdc-tracker {command} --help'"
    assert line["usage"].startswith(f"usage: cdc-tracker {command} [-h]")


def test_options_before_the_command_are_refused_with_the_line_they_meant() -> None:
    as_json = _without_settings(["--log-format", "json", "run"], {})
    plain = _without_settings(["--slot", "replay", "run"], {})
    nested = _without_settings(["--json", "deadletters", "list"], {})

    [line] = [json.loads(line) for line in as_json.stderr.splitlines()]
    assert (as_json.returncode, line["event"]) == (2, "bad usage")
    assert line["error"] == "a command's options come after it"
    assert line["hint"] == "cdc-tracker run --log-format json"
    # The word after --slot is its value, not the command.
    assert plain.returncode == 2
    assert plain.stderr.startswith("usage: cdc-tracker run [-h]")
    assert plain.stderr.endswith(
        "cdc-tracker run: error: a command's options come after it\n"
        "cdc-tracker run: hint: cdc-tracker run --slot replay\n"
    )
    assert nested.stderr.endswith(
        "cdc-tracker deadletters list: hint: cdc-tracker deadletters list --json\n"
    )


def test_options_before_the_command_that_are_wrong_after_it_too_say_why() -> None:
    done = _without_settings(["--log-format", "json", "schema", "--bogus"], {})

    assert done.returncode == 2
    assert done.stderr.startswith("usage: cdc-tracker schema [-h]")
    assert done.stderr.endswith(
        "cdc-tracker schema: error: unrecognized arguments: --log-format json "
        "--bogus\ncdc-tracker schema: hint: a command's options come after it\n"
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        # "replay" follows --slot: its value, not the command
        (["--slot", "replay", "run", "--bogus"], "unrecognized arguments: --bogus"),
        (
            ["--dry-run", "run", "--poll-interval", "abc"],
            "argument --poll-interval: invalid float value: 'abc'",
        ),
    ],
)
def test_options_before_the_command_with_an_error_after_it_name_that_command(
    args: list[str], error: str
) -> None:
    done = _without_settings(args, {})

    assert done.returncode == 2
    assert done.stderr.startswith("usage: cdc-tracker run [-h]")
    assert done.stderr.endswith(
        f"cdc-tracker run: error: {error}\n"
        "cdc-tracker run: hint: a command's options come after it\n"
    )


def test_the_suggested_line_keeps_no_password() -> None:
    dsn = "postgresql://tracker:s3cret@127.0.0.1:1/app"
    done = _without_settings(["--dsn", dsn, "status"], {})

    assert done.returncode == 2
    assert "s3cret" not in done.stderr
    assert done.stderr.endswith(
        "cdc-tracker status: hint: cdc-tracker status --dsn "
        "postgresql://tracker:***@127.0.0.1:1/app\n"
    )


def test_a_usage_error_is_argparses_usage_and_line_otherwise() -> None:
    done = _without_settings(["replay", "--since", "1d", "--rate", "abc"], {})
    check = _without_settings(["check", "--log-format", "json"], {})
    unknown = _without_settings(["run", "--bogus"], {})
    action = _without_settings(["deadletters", "list", "--bogus"], {})

    assert (done.returncode, check.returncode, unknown.returncode) == (2, 2, 2)
    # An unknown flag is the command's: its usage, not the top one's.
    assert unknown.stderr.startswith("usage: cdc-tracker run [-h]")
    assert unknown.stderr.endswith(
        "cdc-tracker run: error: unrecognized arguments: --bogus\n"
    )
    assert action.stderr.startswith("usage: cdc-tracker deadletters list [-h]")
    assert done.stderr.startswith("usage: cdc-tracker replay [-h]")
    assert done.stderr.endswith(
        "cdc-tracker replay: error: argument --rate: invalid float value: 'abc'\n"
    )
    # check's problems are lines for people and editors, whatever the logs.
    assert check.stderr.endswith(
        "cdc-tracker check: error: unrecognized arguments: --log-format\n"
    )


def _without_settings(
    args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``cdc-tracker`` with ``env`` as its only CDC_TRACKER_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDC_TRACKER_")}
    return subprocess.run(
        [sys.executable, "-m", "cdc_tracker", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
