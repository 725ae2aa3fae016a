"""Numerics past Python's 4,300-digit limit on integers travel exactly.

A PostgreSQL numeric holds up to 131,072 digits before the point. Such an integer
value must reach the destination, a dead letter, a retry and a backfill with every
digit, and never stop the pipeline.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import psycopg
import pytest

from cdc_tracker.exact_json import loads
from cdc_tracker.replay.main import run_replay
from cdc_tracker.replay.runner import ReplayOptions
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import (
    cli_main,
    retry_all_letters,
    running_daemon,
    settings_for,
    sql,
)

HUGE = "1" + "0" * 5000 + "7"  # 5,002 digits

RULEBOOK = """\
version: 1
tables:
  public.amounts:
    user_id: id
track:
  - event: Amount Seen
    table: public.amounts
    on: insert
    properties:
      plain: plain
      listed: listed
      doc: doc
"""


def _setup(db: str, tmp_path: Path) -> Path:
    sql(
        db,
        "create table amounts "
        "(id bigint primary key, plain numeric, listed numeric[], doc jsonb)",
    )
    path = tmp_path / "rulebook.yaml"
    path.write_text(RULEBOOK)
    return path


def test_a_huge_integer_numeric_is_sent_with_every_digit(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    path = _setup(empty_db, tmp_path)
    with running_daemon(settings_for(empty_db, receiver, path)) as daemon:
        sql(
            empty_db,
            f"insert into amounts values (1, {HUGE}, '{{{HUGE}, 2.50}}', "
            f"'{{\"n\": {HUGE}}}')",
            "insert into amounts values (2, 3, null, null)",
        )
        daemon.caught_up()
    first, second = receiver.calls
    sent = f'"plain":{HUGE},"listed":[{HUGE},2.50],"doc":{{"n":{HUGE}}}'
    assert sent.encode() in first.raw
    assert second.user_id == "2"


def test_a_refused_call_with_a_huge_integer_is_a_dead_letter_and_retried_whole(
    empty_db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = _setup(empty_db, tmp_path)
    settings = settings_for(empty_db, receiver, path)
    with running_daemon(settings) as daemon:
        # Refused past the patience (0.5 s): then a dead letter.
        receiver.fail_for(30, status=400)
        sql(empty_db, f"insert into amounts values (1, {HUGE}, null, null)")
        daemon.caught_up()
        receiver.fail_for(0)
        sql(empty_db, "insert into amounts values (2, 3, null, null)")
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 1
    assert [call.user_id for call in receiver.calls] == ["2"]
    with psycopg.connect(empty_db) as conn:
        stored = conn.execute(
            "select call->'properties'->>'plain' from cdc_tracker.dead_letters"
        ).fetchall()
    assert stored == [(HUGE,)]

    assert retry_all_letters(settings, monkeypatch) == 0
    retried = receiver.calls[-1]
    assert retried.user_id == "1"
    assert f'"plain":{HUGE}'.encode() in retried.raw


def test_an_oversize_call_of_huge_integers_is_a_dead_letter_and_the_next_goes_on(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    path = _setup(empty_db, tmp_path)
    listed = ",".join([HUGE] * 8)  # over the 32 KB per-call limit
    with running_daemon(settings_for(empty_db, receiver, path)) as daemon:
        sql(
            empty_db,
            f"insert into amounts values (1, 1, '{{{listed}}}', null)",
            "insert into amounts values (2, 3, null, null)",
        )
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 1
    assert [call.user_id for call in receiver.calls] == ["2"]
    with psycopg.connect(empty_db) as conn:
        (reason, last), *_ = conn.execute(
            "select reason, change->'new'->>'listed' from cdc_tracker.dead_letters"
        ).fetchall()
    assert "per-call limit" in reason
    assert last == f"{{{listed}}}"  # the change, as wal2json wrote it


def test_replay_sends_a_huge_integer_key_with_the_live_daemons_ids(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """A backfill of such rows runs, and names their calls as the daemon did."""
    sql(
        empty_db,
        "create table amounts (id numeric primary key, plain numeric, "
        "listed numeric[], doc jsonb, at timestamptz not null default now())",
    )
    path = tmp_path / "rulebook.yaml"
    path.write_text(
        RULEBOOK.replace("    user_id: id\n", "    user_id: id\n    cursor: at\n")
    )
    settings = settings_for(empty_db, receiver, path)
    with running_daemon(settings) as daemon:
        sql(empty_db, f"insert into amounts values ({HUGE}, -{HUGE}, null, null)")
        daemon.caught_up()
    [live] = receiver.calls
    out, err = io.StringIO(), io.StringIO()
    options = ReplayOptions(since="1d", dry_run=True)
    assert run_replay(settings, options, threading.Event(), out=out, err=err) == 0
    [replayed] = [loads(line) for line in out.getvalue().splitlines()]
    assert (replayed["userId"], replayed["messageId"]) == (HUGE, live.message_id)
    assert f'"plain":-{HUGE}' in out.getvalue()


def test_a_rule_may_compare_with_a_huge_literal(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    path = _setup(empty_db, tmp_path)
    path.write_text(
        RULEBOOK.replace(
            "    on: insert\n", f"    on: insert\n    when: plain > {HUGE}\n"
        )
    )
    with running_daemon(settings_for(empty_db, receiver, path)) as daemon:
        sql(
            empty_db,
            f"insert into amounts values (1, {HUGE}, null, null)",
            f"insert into amounts values (2, {HUGE}1, null, null)",
        )
        daemon.caught_up()
    assert [call.user_id for call in receiver.calls] == ["2"]


def test_a_rulebook_number_too_long_to_read_is_a_problem_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rulebook.yaml"
    path.write_text(RULEBOOK + f"      big: {HUGE}\n")
    assert cli_main(["check", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"{path}:13: invalid YAML: a number of 5002 digits is too long\n"
    )
