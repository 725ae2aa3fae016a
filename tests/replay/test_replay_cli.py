"""``cdc-tracker replay`` as a command: help, exit codes, Ctrl-C, --resume, --rate."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog

from cdc_tracker.cli import _parser, main
from cdc_tracker.mapping import ids
from cdc_tracker.replay.plan import _flag
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


def test_dry_run_tells_a_call_over_the_size_limit_as_delivery_would(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    long_name = "x" * 20_000  # twice in an identify: traits and context.traits
    sql(
        db,
        "insert into merchants (shop_domain, owner_name, plan_name) "
        f"values ('a.myshopify.com', '{long_name}', 'basic')",
    )

    result = _cli(_env(db, receiver, example_rulebook), "--since", "1h", "--dry-run")

    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [c.get("event", c["type"]) for c in printed] == ["Merchant Installed"]
    assert _ended(result.stderr)[1:] == (1, 1, 1)  # rows, calls, dead letters
    assert receiver.requests == []


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


OLD_ROW_ONLY = """\
version: 1
tables:
  public.merchants:
    user_id: id
    cursor: updated_at
  public.payouts:
    user_id: merchant_id
    cursor: created_at
track:
  - event: Plan Set
    table: public.merchants
    on: [insert, update]
    properties:
      from: old.plan_name
"""


@pytest.mark.usefixtures("default_logging")
@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
def test_nothing_to_replay_lists_the_skipped_rules_before_the_error(
    db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    dry_run: list[str],
) -> None:
    """When every selected rule is skipped, the error's hint points at the skipped
    rules above it: each is there, with its reason."""
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(OLD_ROW_ONLY)

    args = ["--dsn", db, "--rulebook", str(rulebook), "--since", "1h"]
    code = main(["replay", *args, "--table", "merchants", *dry_run])

    err = capsys.readouterr().err
    assert code == 2
    skipped = err.find("skipped rule 'Plan Set' (public.merchants): reads the old row")
    assert 0 <= skipped < err.index("nothing to replay"), err
    # Not on a terminal, the logs are JSON lines, and so is the error ending it.
    stopped = json.loads(err.splitlines()[-1])
    assert stopped["event"] == "stopped on an error"
    assert stopped["error"] == "nothing to replay: every selected rule is skipped"
    assert stopped["hint"].startswith("see the skipped rules above")
    assert stopped["exit_code"] == 2


@pytest.mark.usefixtures("default_logging")
def test_nothing_to_replay_without_skipped_rules_points_at_no_list(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A table that has no rule at all skips none: the hint does not send the
    operator to look for a list that is not there."""
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(OLD_ROW_ONLY)

    args = ["--dsn", db, "--rulebook", str(rulebook), "--since", "1h"]
    code = main(["replay", *args, "--table", "payouts", "--dry-run"])

    err = capsys.readouterr().err
    assert code == 2
    assert "nothing to replay: the selection has no rule" in err
    assert "skipped rule '" not in err
    assert "above" not in err


@pytest.mark.usefixtures("default_logging")
@pytest.mark.parametrize(
    ("selection", "others"),
    [
        ([], "--table public.merchants"),
        (  # --table would add the merchants' identify, which was not asked for
            ["--rule", "Merchant Installed", "--rule", "Payout Fetched"],
            "--rule 'Merchant Installed'",
        ),
    ],
    ids=["tables", "rules"],
)
def test_a_table_without_primary_key_is_refused_with_its_own_fix(
    db: str,
    example_rulebook: Path,
    capsys: pytest.CaptureFixture[str],
    selection: list[str],
    others: str,
) -> None:
    """Pages are ordered by cursor and key: a keyless table cannot be paged, and
    setting a cursor (the fix for the other refusals) would not help it."""
    sql(db, "alter table payouts drop constraint payouts_pkey")

    args = ["--dsn", db, "--rulebook", str(example_rulebook), "--since", "1d"]
    code = main(["replay", *args, *selection, "--dry-run"])

    err = capsys.readouterr().err
    assert code == 2
    assert "table public.payouts has no primary key to page by" in err
    last = json.loads(err.splitlines()[-1])
    assert last["hint"] == (
        f"give public.payouts a primary key; or replay the other tables alone: {others}"
    )
    assert "cursor:" not in err


def test_console_logs_keep_the_plan_and_summary_as_lines_for_people(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    sql(db, "insert into merchants (shop_domain) values ('a.myshopify.com')")
    env = {**_env(db, receiver, example_rulebook), "CDC_TRACKER_LOG_FORMAT": "console"}

    result = _cli(env, "--since", "1h", "--dry-run")

    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "replaying public.merchants: identify public.merchants, Merchant Installed"
    )
    assert "skipped rule 'Plan Changed' (public.merchants): " in result.stderr
    assert lines[-1].startswith("replayed 1 row: 2 calls, 0 dead letters in ")
    assert not any(line.startswith("{") for line in lines)
    assert "hint=" not in result.stderr  # a whole replay has no next step


def _ended(err: str) -> tuple[str, int, int, int]:
    """The last line of a replay under JSON logs: its event, and the rows, calls
    and dead letters it says were replayed. Every line before it is JSON too."""
    lines = [json.loads(line) for line in err.splitlines()]
    last = lines[-1]
    assert last["event"] in ("replay finished", "replay interrupted"), err[-800:]
    return last["event"], last["rows"], last["calls"], last["dead_letters"]


def _summary(err: str) -> tuple[int, int]:
    """The rows and calls the replay's last line says were replayed."""
    return _ended(err)[1:3]


def _payouts(db: str) -> None:
    sql(
        db,
        MERCHANTS,
        "insert into payouts (merchant_id, amount, currency, status, created_at)"
        " select g, 1.50, 'EUR', 'paid', now() - interval '1 second' * g"
        " from generate_series(1, 3000) g",
    )


def _interrupted(
    env: dict[str, str], args: list[str], receiver: FakeRudderStack, calls: int
) -> tuple[int, str]:
    """A replay paced at 1,500 calls/s, Ctrl-C'd once ``calls`` arrived: its
    exit code and standard error."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc_tracker", "replay", *args, "--rate", "1500"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: len(receiver.calls) >= calls, 20)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err


def _payout_ids(db: str, env: dict[str, str]) -> set[str]:
    namespace = f"{db.rsplit('dbname=', 1)[1]}/{env['CDC_TRACKER_SLOT']}"
    return {ids.insert_id(namespace, "Payout Fetched", [n]) for n in range(1, 3001)}


@pytest.mark.parametrize("page_rows", ["100", "5000"])
def test_ctrl_c_stops_then_resume_sends_the_rest_with_the_same_ids(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, page_rows: str
) -> None:
    """Ctrl-C lets the delivery in flight finish: the summary counts every call
    the receiver took and the rows they came from, and --resume sends each other
    call once, whether the stop came between pages or inside one."""
    _payouts(db)
    env = _env(db, receiver, example_rulebook)
    args = ["--since", "1d", "--table", "payouts", "--page-rows", page_rows]
    code, err = _interrupted(env, args, receiver, 600)
    first = receiver.message_ids()

    resumed = _cli(env, *args, "--resume")
    again = _cli(env, *args, "--resume")

    assert code == 130, err
    assert _ended(err)[0] == "replay interrupted"
    assert json.loads(err.splitlines()[-1])["hint"] == (
        "finish it with --resume (same --table and --rule)"
    )
    assert 600 <= len(first) < 3000
    assert _summary(err) == (len(first), len(first))  # one call per payout
    assert resumed.returncode == 0, resumed.stderr
    assert _rulebook_warnings(resumed.stderr) == []  # the same rulebook
    assert _summary(resumed.stderr) == (3000 - len(first), 3000 - len(first))
    # Its progress counts what was left, not the whole window again.
    started = [json.loads(line) for line in resumed.stderr.splitlines()]
    assert [line["rows"] for line in started if line["event"] == "replay started"] == [
        3000 - len(first)
    ]
    every = receiver.message_ids()
    assert set(every) == _payout_ids(db, env)
    assert len(every) == 3000  # nothing was in flight: nothing is sent twice
    assert again.returncode == 2
    assert "nothing to resume" in again.stderr
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "select rows_done, finished_at is not null from cdc_tracker.replay_state"
        ).fetchone()
    assert row == (3000, True)


def test_resuming_after_the_rulebook_changed_says_so(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, tmp_path: Path
) -> None:
    """A rule fixed between the stop and the resume maps the rows left only:
    the resume goes on, and warns that the rows sent were mapped otherwise."""
    _payouts(db)
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(example_rulebook.read_text())
    env = _env(db, receiver, rulebook)
    args = ["--since", "1d", "--table", "payouts"]
    code, err = _interrupted(env, args, receiver, 300)
    rulebook.write_text(rulebook.read_text() + "\n# Payout Fetched reviewed\n")

    resumed = _cli(env, *args, "--resume")

    assert (code, resumed.returncode) == (130, 0), err
    [warning] = _rulebook_warnings(resumed.stderr)
    assert warning["event"].startswith("the rulebook has changed since this replay")
    assert warning["rows_sent"] > 0
    assert "--discard-interrupted" in warning["hint"]


def _rulebook_warnings(err: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in err.splitlines()]
    return [
        line
        for line in lines
        if line["level"] == "warning" and "rulebook" in line["event"]
    ]


def test_an_interrupted_dry_run_says_to_run_it_again_not_to_resume(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    _payouts(db)
    env = _env(db, receiver, example_rulebook)
    args = ["--since", "1d", "--table", "payouts", "--dry-run", "--rate", "200"]
    with subprocess.Popen(
        [sys.executable, "-m", "cdc_tracker", "replay", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        proc.stdout.readline()  # a call printed: the replay is under way
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)

    assert proc.returncode == 130, err
    assert _ended(err)[0] == "replay interrupted"
    assert json.loads(err.splitlines()[-1])["hint"] == (
        "a dry run keeps no state to resume: run it again"
    )
    assert "nothing to resume" in _cli(env, *args[:4], "--resume").stderr


def test_a_replay_killed_inside_a_page_resends_at_most_the_delivery_in_flight(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """The resume position is saved after each acknowledged delivery (100 calls
    at --rate 1000), not only after each page of 5,000 rows: a replay killed
    without a chance to stop cleanly sends again only what it had in flight."""
    _payouts(db)
    env = _env(db, receiver, example_rulebook)
    args = ["--since", "1d", "--table", "payouts"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc_tracker", "replay", *args, "--rate", "1000"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: len(receiver.calls) >= 600, 20)
    proc.kill()
    proc.wait(timeout=20)
    first = len(receiver.calls)

    resumed = _cli(env, *args, "--resume")

    assert resumed.returncode == 0, resumed.stderr
    every = receiver.message_ids()
    assert set(every) == _payout_ids(db, env)
    assert 600 <= first < 3000
    assert len(every) - 3000 <= 100


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


def test_a_dry_run_whose_reader_goes_away_stops_quietly(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """``replay --dry-run | head -1``: exit 141, as a Unix tool, no traceback."""
    _payouts(db)
    env = _env(db, receiver, example_rulebook)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc_tracker", "replay", "--since", "1d", "--dry-run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert '"messageId"' in proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 141, err
    assert "Traceback" not in err
    assert "BrokenPipeError" not in err


BERLIN_RULEBOOK = """\
version: 1
timezone: Europe/Berlin
tables:
  public.wall:
    user_id: id
    cursor: ts
track:
  - event: Walled
    table: public.wall
    on: insert
    properties: {ts: ts}
"""


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        # The clocks went back: 02:00 is shown twice, and is the later (01:00Z).
        (("2026-10-25T00:45:00Z", "2026-10-25T01:15:00Z"), [1]),
        (("2026-10-24T23:45:00Z", "2026-10-25T00:15:00Z"), []),
        # The clocks went forward: 02:30 is skipped, read with +01:00 (01:30Z).
        (("2026-03-29T01:00:00Z", "2026-03-29T01:45:00Z"), [3]),
    ],
)
def test_a_wall_time_cursor_is_windowed_by_the_instant_its_calls_carry(
    db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    window: tuple[str, str],
    expected: list[int],
) -> None:
    since, until = window
    sql(
        db,
        "create table wall (id bigint primary key, ts timestamp not null)",
        "create index on wall (ts, id)",
        "insert into wall values (1, '2026-10-25 02:00'), (2, '2026-10-25 03:30'),"
        " (3, '2026-03-29 02:30'), (4, '2026-03-29 04:00')",
    )
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(BERLIN_RULEBOOK)
    env = _env(db, receiver, rulebook)

    result = _cli(env, "--since", since, "--until", until, "--dry-run")

    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in result.stdout.splitlines()]
    assert [int(call["userId"]) for call in calls] == expected
    for call in calls:
        assert since <= call["timestamp"].replace(".000Z", "Z") < until


def test_nothing_to_resume_names_the_replay_that_is_waiting(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """--resume with another selection than the interrupted replay's finds
    nothing: it says which one waits, as the flags that name it."""
    _payouts(db)
    env = _env(db, receiver, example_rulebook)
    args = ["--since", "1d", "--table", "payouts", "--rule", "Payout Fetched"]
    code, err = _interrupted(env, args, receiver, 300)
    assert code == 130, err
    sent = _ended(err)[1]

    elsewhere = _cli(env, "--resume")
    other_slot = _cli({**env, "CDC_TRACKER_SLOT": "other_slot"}, *args, "--resume")

    assert elsewhere.returncode == 2
    [line] = [json.loads(line) for line in elsewhere.stderr.splitlines()[-1:]]
    assert line["error"] == (
        "nothing to resume: no interrupted replay of every table with every rule"
    )
    assert line["hint"] == (
        "waiting: --table public.payouts --rule 'Payout Fetched' "
        f"({sent:,} rows sent): --resume takes the same --table and --rule as the "
        "replay it continues"
    )
    # Under another namespace (another slot's) the same flags select nothing:
    # the hint says whose the waiting replay is.
    namespace = f"{db.rsplit('dbname=', 1)[1]}/{env['CDC_TRACKER_SLOT']}"
    assert other_slot.returncode == 2
    assert json.loads(other_slot.stderr.splitlines()[-1])["hint"].startswith(
        "waiting: --table public.payouts --rule 'Payout Fetched' of namespace "
        f"'{namespace}' (its --slot or CDC_TRACKER_NAMESPACE) ({sent:,} rows sent)"
    )


@pytest.mark.parametrize("name", ["Merchant Installed", "-Refund", "-1 Weird", "it's"])
def test_the_flags_a_refusal_suggests_read_back_as_the_names(name: str) -> None:
    """What the hint prints is pasted into a shell, then read by argparse."""
    words = shlex.split(_flag("--rule", name))

    args = _parser().parse_args(["replay", "--since", "1d", *words])

    assert args.rule == [name]
