"""``cdc-tracker replay`` as a command: help, exit codes, Ctrl-C, --resume, --rate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import structlog

from cdc_tracker.cli import main
from cdc_tracker.mapping import ids
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import WRITE_KEY, settings_for, sql, wait_until

MERCHANTS = (
    "insert into merchants (shop_domain)"
    " select 's' || g from generate_series(1, 3000) g"
)
NO_CURSOR = """\
version: 1
tables:
  public.payouts:
    user_id: merchant_id
track:
  - event: Payout Fetched
    table: public.payouts
    on: insert
"""


def _env(db: str, receiver: FakeRudderStack, rulebook: Path) -> dict[str, str]:
    settings = settings_for(db, receiver, rulebook)
    return {
        **os.environ,
        "CDC_TRACKER_DSN": db,
        "CDC_TRACKER_SLOT": settings.slot,
        "CDC_TRACKER_RULEBOOK": str(rulebook),
        "RUDDERSTACK_DATA_PLANE_URL": receiver.url,
        "RUDDERSTACK_WRITE_KEY": WRITE_KEY,
        "CDC_TRACKER_LOG_FORMAT": "json",
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc_tracker", "replay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_says_which_rules_are_skipped_and_why() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cdc_tracker", "replay", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )

    text = " ".join(result.stdout.split())
    assert "rules that fire only on update or delete" in text
    assert "old.x, changed(x)" in text
    assert "130 interrupted" in text


def test_run_time_report_names_each_skipped_rule_with_its_reason(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    result = _cli(_env(db, receiver, example_rulebook), "--since", "1h", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "replaying public.merchants: identify public.merchants, Merchant" in (
        result.stderr
    )
    assert (
        "skipped rule 'Xero Connection Lost' (public.merchants): fires on update"
        in result.stderr
    )
    assert "skipped rule 'Plan Changed' (public.merchants)" in result.stderr
    # The example schema indexes its cursors: no page scans a whole table.
    assert "no index leads with the cursor column" not in result.stderr


@pytest.fixture
def default_logging() -> Iterator[None]:
    """``main`` points the logs at the captured stderr; put them back after."""
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("default_logging")
@pytest.mark.parametrize(
    "case",
    [
        ("", ["--since", "2999-01-01"], "is in the future"),
        ("", ["--since", "last tuesday"], "neither an ISO 8601 time nor an age"),
        ("", ["--since", "1d", "--until", "2d"], "is not after --since"),
        ("", [], "replay needs --since"),
        ("", ["--resume"], "nothing to resume"),
        ("", ["--since", "1d", "--table", "orders"], "not a table of the rulebook"),
        ("", ["--since", "1d", "--rule", "Plan Changed"], "cannot be replayed"),
        ("no_cursor", ["--since", "1d"], "has no 'cursor' to replay by"),
        (
            "alter table merchants drop column updated_at",
            ["--since", "1d"],
            "cursor column 'updated_at' is not in",
        ),
        (
            "alter table payouts alter created_at type text",
            ["--since", "1d"],
            "cursor column 'created_at' of public.payouts is text, not a timestamp",
        ),
    ],
)
def test_bad_usage_exits_2_with_a_clear_message(
    db: str,
    example_rulebook: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, list[str], str],
) -> None:
    setup, args, message = case
    rulebook = example_rulebook
    if setup == "no_cursor":
        rulebook = tmp_path / "rulebook.yaml"
        rulebook.write_text(NO_CURSOR)
    elif setup:
        sql(db, setup)

    code = main(
        ["replay", "--dsn", db, "--rulebook", str(rulebook), "--dry-run", *args]
    )

    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.usefixtures("default_logging")
def test_a_table_without_primary_key_is_refused_with_its_own_fix(
    db: str, example_rulebook: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pages are ordered by cursor and key: a keyless table cannot be paged, and
    setting a cursor (the fix for the other refusals) would not help it."""
    sql(db, "alter table payouts drop constraint payouts_pkey")

    args = ["--dsn", db, "--rulebook", str(example_rulebook), "--since", "1d"]
    code = main(["replay", *args, "--dry-run"])

    err = capsys.readouterr().err
    assert code == 2
    assert "table public.payouts has no primary key to page by" in err
    assert "give public.payouts a primary key; or leave the table out with" in err
    assert "cursor:" not in err


def test_ctrl_c_stops_then_resume_sends_the_rest_with_the_same_ids(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    sql(
        db,
        MERCHANTS,
        "insert into payouts (merchant_id, amount, currency, status, created_at)"
        " select g, 1.50, 'EUR', 'paid', now() - interval '1 second' * g"
        " from generate_series(1, 3000) g",
    )
    env = _env(db, receiver, example_rulebook)
    args = ["--since", "1d", "--table", "payouts", "--page-rows", "100"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc_tracker", "replay", *args, "--rate", "1500"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: len(receiver.calls) >= 600, 20)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    first = receiver.message_ids()

    resumed = _cli(env, *args, "--resume")
    again = _cli(env, *args, "--resume")

    assert proc.returncode == 130, err
    assert "continue with the same command and --resume" in err
    assert 600 <= len(first) < 3000
    assert resumed.returncode == 0, resumed.stderr
    every = receiver.message_ids()
    namespace = f"{db.rsplit('dbname=', 1)[1]}/{env['CDC_TRACKER_SLOT']}"
    assert set(every) == {
        ids.insert_id(namespace, "Payout Fetched", [n]) for n in range(1, 3001)
    }
    assert len(every) - 3000 <= 100  # at most the page in flight is sent again
    assert again.returncode == 2
    assert "nothing to resume" in again.stderr
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "select rows_done, finished_at is not null from cdc_tracker.replay_state"
        ).fetchone()
    assert row == (3000, True)


def test_rate_caps_the_calls_per_second(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    sql(
        db,
        MERCHANTS,
        "insert into payouts (merchant_id, amount, currency, status)"
        " select g, 1.50, 'EUR', 'paid' from generate_series(1, 900) g",
    )
    env = _env(db, receiver, example_rulebook)

    started = time.monotonic()
    result = _cli(env, "--since", "1h", "--table", "payouts", "--rate", "300")

    assert result.returncode == 0, result.stderr
    calls = receiver.calls
    assert len(calls) == 900
    span = calls[-1].arrived - calls[0].arrived
    assert 2.6 <= span <= 4.0  # (900 - the first chunk of 30) / 300 per second
    for call in calls:
        in_a_second = [c for c in calls if 0 <= c.arrived - call.arrived < 1.0]
        assert len(in_a_second) <= 300 + 30
    assert time.monotonic() - started < 15
