"""What a user may get wrong or meet by surprise, through the command line: each
gets a clear answer, and nothing is lost or printed that should not be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import WRITE_KEY, sql, wait_until

MERCHANTS = (
    "insert into merchants (shop_domain)"
    " select 's' || g from generate_series(1, 2000) g"
)


def _env(db: str, receiver: FakeRudderStack, rulebook: Path) -> dict[str, str]:
    dbname = conninfo_to_dict(db)["dbname"]
    return {
        **os.environ,
        "CDC_TRACKER_DSN": db,
        "CDC_TRACKER_SLOT": f"cdc_tracker_{dbname}",
        "CDC_TRACKER_RULEBOOK": str(rulebook),
        "RUDDERSTACK_DATA_PLANE_URL": receiver.url,
        "RUDDERSTACK_WRITE_KEY": WRITE_KEY,
        "CDC_TRACKER_LOG_FORMAT": "json",
        "CDC_TRACKER_METRICS_ADDRESS": "off",
    }


def _cli(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc_tracker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_run_without_wal2json_on_the_server_exits_2_instead_of_retrying_forever(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """A server without wal2json is a setup error (exit 2 with the install hint),
    like wal_level != logical: no retrying forever."""
    dbname = conninfo_to_dict(db)["dbname"]
    with psycopg.connect(db, autocommit=True) as conn:
        # New sessions of this database cannot find the plugin, as on a server
        # without the package.
        conn.execute(
            f"alter database \"{dbname}\" set dynamic_library_path = '/nonexistent'"
        )
    env = _env(db, receiver, example_rulebook)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc_tracker", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        pytest.fail(f"still running after 20 s without wal2json:\n{err[-1500:]}")
    assert proc.returncode == 2, err
    assert "wal2json" in err


def test_a_password_with_a_space_is_never_printed(db: str) -> None:
    """libpq quotes a malformed URI's password (or the whole URI) in its error:
    the password is never printed all the same."""
    password = "My SecretLEAK"
    params = conninfo_to_dict(db)
    dsn = (
        f"postgresql://{params['user']}:{password}@{params['host']}:"
        f"{params['port']}/{params['dbname']}"
    )
    env = {**os.environ, "CDC_TRACKER_DSN": dsn, "CDC_TRACKER_LOG_FORMAT": "json"}
    for args in (["status"], ["deadletters", "list"]):
        result = _cli(env, *args)
        assert "SecretLEAK" not in result.stdout + result.stderr, result.stderr


def test_resume_finds_a_replay_started_with_the_short_table_name(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """`--table merchants` and `--table public.merchants` name the same table, so
    either continues a replay started with the other."""
    sql(db, MERCHANTS)
    env = _env(db, receiver, example_rulebook)
    args = ["replay", "--since", "1d", "--page-rows", "100", "--rate", "400"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc_tracker", *args, "--table", "merchants"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: len(receiver.calls) >= 400, 20)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 130

    resumed = _cli(env, "replay", "--resume", "--table", "public.merchants")
    assert resumed.returncode == 0, resumed.stderr[-800:]


def test_a_new_replay_does_not_silently_discard_an_interrupted_one(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Another replay of the same selection is refused while one is interrupted
    (its rows would never be sent); --resume finishes it, or
    --discard-interrupted starts anew."""
    sql(db, MERCHANTS)
    env = _env(db, receiver, example_rulebook)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc_tracker", "replay", "--since", "1d",
         "--page-rows", "100", "--rate", "400"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    wait_until(lambda: len(receiver.calls) >= 400, 20)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 130

    other = _cli(env, "replay", "--since", "2d", "--until", "1d")
    assert other.returncode == 2, other.stderr[-600:]
    assert "was interrupted and is waiting" in other.stderr
    assert "--discard-interrupted" in other.stderr
    resumed = _cli(env, "replay", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-600:]
    assert {call.user_id for call in receiver.calls} >= {str(n) for n in range(1, 2001)}
    again = _cli(env, "replay", "--since", "1d", "--rate", "100000")
    assert again.returncode == 0, again.stderr[-600:]


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--since", "10000000d", "--dry-run"],
        ["replay", "--since", "1h", "--rate", "inf", "--dry-run"],
        ["replay", "--since", "1h", "--rate", "1e-300", "--dry-run"],
        ["replay", "--resume", "--discard-interrupted"],
        ["deadletters", "purge", "--before", "10000000d", "--yes"],
    ],
)
def test_odd_arguments_get_a_message_not_a_traceback(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, args: list[str]
) -> None:
    result = _cli(_env(db, receiver, example_rulebook), *args)
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode == 2


def test_interrupted_replay_progress_names_the_table_it_was_reading(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """The last progress line of an interrupted replay names the table it was
    reading, not the plan's last one."""
    sql(db, MERCHANTS)
    env = _env(db, receiver, example_rulebook)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc_tracker", "replay", "--since", "1d",
         "--page-rows", "100", "--rate", "400"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    wait_until(lambda: len(receiver.calls) >= 400, 20)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    progress = [line for line in err.splitlines() if '"replay progress"' in line]
    assert progress, err[-800:]
    assert '"public.merchants"' in progress[-1], progress[-1]
