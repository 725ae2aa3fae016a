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

from cdc_tracker.deadletters.store import DeadLetterStore
from cdc_tracker.model import DeadLetter, Lsn
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


def _start_replay(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """A slow replay of the last day (100-row pages, 400 calls/s), with ``args``."""
    return subprocess.Popen(
        [sys.executable, "-m", "cdc_tracker", "replay", "--since", "1d",
         "--page-rows", "100", "--rate", "400", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _interrupt_replay(
    env: dict[str, str], receiver: FakeRudderStack, *args: str, linger: float = 0.0
) -> str:
    """Start a slow replay, Ctrl-C it once 400 calls arrived (``linger`` seconds
    later); return what it wrote on stderr."""
    proc = _start_replay(env, *args)
    wait_until(lambda: len(receiver.calls) >= 400, 20)
    time.sleep(linger)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    return err


def test_resume_finds_a_replay_started_with_the_short_table_name(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """`--table merchants` and `--table public.merchants` name the same table, so
    either continues a replay started with the other."""
    sql(db, MERCHANTS)
    env = _env(db, receiver, example_rulebook)
    _interrupt_replay(env, receiver, "--table", "merchants")

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
    _interrupt_replay(env, receiver)

    other = _cli(env, "replay", "--since", "2d", "--until", "1d")
    assert other.returncode == 2, other.stderr[-600:]
    assert "stopped before its end (interrupted, or on an error) and is waiting" in (
        other.stderr
    )
    assert "--discard-interrupted" in other.stderr
    resumed = _cli(env, "replay", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-600:]
    assert {call.user_id for call in receiver.calls} >= {str(n) for n in range(1, 2001)}
    again = _cli(env, "replay", "--since", "1d", "--rate", "100000")
    assert again.returncode == 0, again.stderr[-600:]


def test_a_replay_stopped_before_its_first_row_does_not_block_the_next(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Nothing of it was done (its key refused): a new replay starts anew in the
    window asked, instead of asking for --resume or --discard-interrupted."""
    sql(db, MERCHANTS)
    env = _env(db, receiver, example_rulebook)
    receiver.write_keys.clear()  # every request refused: delivery pauses
    proc = _start_replay(env)
    wait_until(lambda: len(receiver.statuses()) >= 1, 20)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err[-600:]
    assert receiver.calls == []
    receiver.write_keys.add(WRITE_KEY)

    again = _cli(env, "replay", "--since", "1d", "--rate", "100000")

    assert again.returncode == 0, again.stderr[-600:]
    assert "had sent nothing: starting anew" in again.stderr
    assert {call.user_id for call in receiver.calls} >= {str(n) for n in range(1, 2001)}


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--since", "10000000d", "--dry-run"],
        ["replay", "--since", "1h", "--rate", "inf", "--dry-run"],
        ["replay", "--since", "1h", "--rate", "1e-300", "--dry-run"],
        ["replay", "--resume", "--discard-interrupted"],
        ["deadletters", "purge", "--before", "10000000d", "--yes"],
        ["run", "--poll-interval", "inf"],
        ["run", "--poll-interval", "1e400"],
    ],
)
def test_odd_arguments_get_a_message_not_a_traceback(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, args: list[str]
) -> None:
    result = _cli(_env(db, receiver, example_rulebook), *args)
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode == 2


def test_an_infinite_number_setting_is_refused_by_name(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    env = {**_env(db, receiver, example_rulebook), "CDC_TRACKER_HTTP_TIMEOUT": "inf"}
    result = _cli(env, "run")
    assert result.returncode == 2
    assert "setting http_timeout from CDC_TRACKER_HTTP_TIMEOUT is 'inf'" in (
        result.stderr
    )
    assert "expected a finite number" in result.stderr


def test_interrupted_replay_progress_names_the_table_it_was_reading(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """The last progress line of an interrupted replay names the table it was
    reading, not the plan's last one."""
    sql(db, MERCHANTS)
    env = _env(db, receiver, example_rulebook)
    err = _interrupt_replay(env, receiver, linger=0.2)
    progress = [line for line in err.splitlines() if '"replay progress"' in line]
    assert progress, err[-800:]
    assert '"public.merchants"' in progress[-1], progress[-1]


def test_a_repeated_table_flag_does_not_bypass_the_interrupted_replay(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """`--table merchants --table public.merchants` is the same selection as
    `--table merchants`: it must be refused like it while that one waits."""
    sql(db, MERCHANTS)
    env = _env(db, receiver, example_rulebook)
    _interrupt_replay(env, receiver, "--table", "merchants")
    other = _cli(
        env, "replay", "--since", "1d", "--rate", "100000",
        "--table", "merchants", "--table", "public.merchants",
    )  # fmt: skip
    assert other.returncode == 2, other.stderr[-600:]


def test_an_empty_purge_before_does_not_purge_every_letter(db: str) -> None:
    """`purge --before "$CUTOFF"` with CUTOFF unset must be refused (exit 2),
    not act as --all."""
    env = {
        **os.environ,
        "CDC_TRACKER_DSN": db,
        "CDC_TRACKER_SLOT": "s",
        "CDC_TRACKER_LOG_FORMAT": "json",
        "CDC_TRACKER_METRICS_ADDRESS": "off",
    }
    with psycopg.connect(db, autocommit=True) as conn:
        store = DeadLetterStore(conn, "s")
        store.ensure_schema()
        store.save([DeadLetter("", "track X", "refused", Lsn(5), 0, call={"a": 1})])
    result = _cli(env, "deadletters", "purge", "--before", "", "--yes")
    with psycopg.connect(db, autocommit=True) as conn:
        [(left,)] = conn.execute("select count(*) from cdc_tracker.dead_letters")
    assert result.returncode == 2, result.stdout + result.stderr
    assert left == 1


def test_an_unquoted_keyword_password_with_a_space_is_never_printed(db: str) -> None:
    """libpq's `missing "=" after "..."` quotes the second word of the password."""
    params = conninfo_to_dict(db)
    dsn = (
        f"host={params['host']} port={params['port']} user={params['user']} "
        f"dbname={params['dbname']} password=My SecretLEAK"
    )
    env = {**os.environ, "CDC_TRACKER_DSN": dsn, "CDC_TRACKER_LOG_FORMAT": "json"}
    for args in (["status"], ["deadletters", "list"], ["doctor"]):
        result = _cli(env, *args)
        assert "SecretLEAK" not in result.stdout + result.stderr, result.stderr


def test_resume_is_refused_while_the_replay_it_would_continue_still_runs(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """A replay still running is not 'interrupted and waiting': a second one
    (--resume, as the refusal suggests) must not send the same rows beside it."""
    sql(db, MERCHANTS)
    env = _env(db, receiver, example_rulebook)
    first = _start_replay(env, "--table", "merchants")
    try:
        wait_until(lambda: len(receiver.calls) >= 400, 20)
        second = _cli(
            env, "replay", "--resume", "--table", "merchants", "--rate", "100000"
        )
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=20)
    assert second.returncode == 2, second.stderr[-600:]
    assert "a replay of this selection is running in another process" in (second.stderr)


def test_a_misspelt_environment_variable_is_named_with_the_right_one(
    example_rulebook: Path,
) -> None:
    """A settings file refuses an unknown key; the environment cannot refuse what
    others may set, but says what it ignores."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CDC_TRACKER")},
        "CDC_TRACKER_RULEBOOK": str(example_rulebook),
        "CDC_TRACKER_POLL_INTERVALL": "5",
        "CDC_TRACKER_SOMETHING_ELSE": "1",
        "CDC_TRACKER_PG_BINDIR": "/nowhere",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cdc_tracker", "run"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "no database to read from" in result.stderr
    assert "unknown environment variable ignored" in result.stderr
    assert (
        "CDC_TRACKER_POLL_INTERVALL (did you mean CDC_TRACKER_POLL_INTERVAL?)"
        in result.stderr
    )
    assert "CDC_TRACKER_SOMETHING_ELSE" in result.stderr
    assert "CDC_TRACKER_PG_BINDIR" not in result.stderr
