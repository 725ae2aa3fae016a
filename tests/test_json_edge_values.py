"""A json column takes what jsonb and JSON encoders refuse: a lone surrogate
escape, a number of any exponent, nesting past the encoder's limit. Such a value
reaches the destination or a dead letter, never stops the pipeline, before or after
a restart, and is never sent altered."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_tracker.deadletters.store import ALTERED, NUMBERS_AS_TEXT, DeadLetterStore
from cdc_tracker.model import DeadLetter, Lsn
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

RULEBOOK = """\
version: 1
tables:
  public.docs:
    user_id: id
track:
  - event: Doc Seen
    table: public.docs
    on: insert
    properties:
      doc: doc
"""


def _setup(db: str, tmp_path: Path) -> Path:
    sql(db, "create table docs (id bigint primary key, doc json)")
    path = tmp_path / "rulebook.yaml"
    path.write_text(RULEBOOK)
    return path


def _letters(db: str) -> list[tuple[str, Any, Any]]:
    """Each letter's reason, stored change (its new row) and stored call."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "select reason, change->'new', call from cdc_tracker.dead_letters "
            "order by id"
        ).fetchall()
    return [(str(reason), new, call) for reason, new, call in rows]


@pytest.mark.parametrize(
    "case",
    [
        ('{"v": "a\\ud800b"}', "cannot encode: str is not valid UTF-8"),
        (
            "[" * 300 + "]" * 300,
            "cannot encode: a json value nests too deeply (past 255 levels "
            "with the call's own)",
        ),
        (
            '{"v": 1e9999999999999999999}',
            "cannot convert column 'doc' of type json: the json document holds a "
            "number whose exponent no decimal can hold",
        ),
    ],
    ids=["lone surrogate", "nested 300 deep", "exponent past any decimal"],
)
def test_a_value_no_call_can_carry_is_a_dead_letter_and_a_restart_goes_on(
    empty_db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, str],
) -> None:
    """The letter holds the change, for a retry to map again; it stays dead."""
    doc, why = case
    settings = settings_for(empty_db, receiver, _setup(empty_db, tmp_path))
    with running_daemon(settings) as daemon:
        sql(
            empty_db,
            f"insert into docs values (1, '{doc}')",
            """insert into docs values (2, '{"v": 2}')""",
        )
        daemon.caught_up()
    with running_daemon(settings) as daemon:
        sql(empty_db, """insert into docs values (3, '{"v": 3}')""")
        daemon.caught_up()
    assert [call.user_id for call in receiver.calls] == ["2", "3"]
    [(reason, new, call)] = _letters(empty_db)
    assert reason.startswith(why)
    assert (new["id"], new["doc"], call) == (1, doc, None)
    assert retry_all_letters(settings, monkeypatch) == 1
    assert [call.user_id for call in receiver.calls] == ["2", "3"]
    [(still, _, _)] = _letters(empty_db)
    assert still.startswith(why)


@pytest.mark.parametrize(
    "case",
    [
        ("1e-100000", "1E-100000"),  # beyond numeric
        ("-2.5E+200000", "-2.5E+200000"),
        ("1e40000", "1E+40000"),  # jsonb would write 40,001 digits
        ("1E+2", "1E+2"),  # jsonb would write 100
        ("-0.0", "-0.0"),  # jsonb would write 0.0
    ],
    ids=["tiny", "huge", "expanded", "exponent", "negative zero"],
)
def test_a_number_jsonb_cannot_keep_is_sent_and_retried_as_written(
    empty_db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, str],
) -> None:
    """Not written out as 100,000 zeros. Refused, its letter keeps it as text with
    its place, and a retry sends it as the daemon did."""
    number, sent = case
    settings = settings_for(empty_db, receiver, _setup(empty_db, tmp_path))
    with running_daemon(settings) as daemon:
        # Refused until past the patience (0.5 s): then a dead letter.
        receiver.fail_for(30, status=400)
        sql(empty_db, f"""insert into docs values (1, '{{"v": {number}}}')""")
        daemon.caught_up()
        receiver.fail_for(0)
    assert receiver.calls == []
    [(reason, _, call)] = _letters(empty_db)
    assert reason == "refused by the destination with status 400: bad request"
    assert call["properties"]["doc"] == {"v": sent}
    assert call[NUMBERS_AS_TEXT] == [["properties", "doc", "v"]]

    assert retry_all_letters(settings, monkeypatch) == 0
    [retried] = receiver.calls
    assert f'"doc":{{"v":{sent}}}'.encode() in retried.raw
    assert _letters(empty_db) == []


def test_replay_of_such_values_goes_on_past_them(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    path = _setup(empty_db, tmp_path)
    sql(empty_db, "alter table docs add column at timestamptz not null default now()")
    path.write_text(
        RULEBOOK.replace("    user_id: id\n", "    user_id: id\n    cursor: at\n")
    )
    sql(
        empty_db,
        """insert into docs values (1, '{"v": 1e9999999999999999999}')""",
        """insert into docs values (2, '{"v": "a\\ud800b"}')""",
        """insert into docs values (3, '{"v": 3}')""",
    )
    out, err = io.StringIO(), io.StringIO()
    options = ReplayOptions(since="1d", dry_run=True)
    settings = settings_for(empty_db, receiver, path)
    assert run_replay(settings, options, threading.Event(), out=out, err=err) == 0
    [line] = out.getvalue().splitlines()
    assert '"userId":"3"' in line
    assert "2 dead letters" in err.getvalue()


def test_a_change_letter_keeps_its_numbers_as_written_and_is_retried(
    empty_db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A double past 1e15 arrives in exponent form, which jsonb would expand."""
    path = _setup(empty_db, tmp_path)
    sql(empty_db, "alter table docs add column x double precision, add column u text")
    with_x = RULEBOOK + "      x: x\n"
    path.write_text(with_x.replace("user_id: id", "user_id: u"))
    settings = settings_for(empty_db, receiver, path)
    with running_daemon(settings) as daemon:
        sql(empty_db, "insert into docs values (1, '{}', 1e30, null)")
        daemon.caught_up()
    [(reason, new, _)] = _letters(empty_db)
    assert reason.startswith("user_id (u) is null")
    assert ALTERED not in new
    sql(empty_db, "update docs set u = 'one'")  # the letter's change keeps null
    path.write_text(with_x.replace("user_id: id", "user_id: \"coalesce(u, 'x')\""))
    assert retry_all_letters(settings, monkeypatch) == 0
    [call] = receiver.calls
    assert call.user_id == "x"
    assert b'"x":1E+30' in call.raw  # as the daemon writes it, not in 31 digits


def test_a_letter_that_cannot_be_stored_keeps_its_place_and_is_never_sent(
    empty_db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No input is known to reach this; the store must still not stop on it."""
    settings = settings_for(empty_db, receiver, _setup(empty_db, tmp_path))
    nested: Any = []
    for _ in range(300):  # past what orjson writes
        nested = [nested]
    letter = DeadLetter(
        "public.docs", "Doc Seen", "why", Lsn(7), 0, call=nested_call(nested)
    )
    with psycopg.connect(empty_db, autocommit=True) as conn:
        store = DeadLetterStore(conn, settings.slot)
        store.ensure_schema()
        store.save([letter])
    [(_, _, call)] = _letters(empty_db)
    assert call[ALTERED] == ["the value could not be stored"]
    assert "unstorable" in call
    assert retry_all_letters(settings, monkeypatch) == 1
    assert receiver.requests == []


def nested_call(value: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": "m1",
        "userId": "1",
        "properties": {"v": value},
    }


def test_a_negative_zero_a_refused_call_held_is_retried_with_its_sign(
    empty_db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = _setup(empty_db, tmp_path)
    sql(empty_db, "alter table docs add column da double precision[]")
    path.write_text(RULEBOOK + "      da: da\n")
    settings = settings_for(empty_db, receiver, path)
    with running_daemon(settings) as daemon:
        sql(empty_db, "insert into docs values (1, '{}', '{-0, 1.5}')")
        daemon.caught_up()
        # Refused past the patience (0.5 s): then a dead letter.
        receiver.fail_for(30, status=400)
        sql(empty_db, "insert into docs values (2, '{}', '{-0, 1.5}')")
        daemon.caught_up()
        receiver.fail_for(0)
    [sent] = receiver.calls
    assert b'"da":[-0,1.5]' in sent.raw
    assert retry_all_letters(settings, monkeypatch) == 0
    assert b'"da":[-0,1.5]' in receiver.calls[-1].raw


def test_show_prints_a_letters_numbers_as_the_call_had_them(
    empty_db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_for(empty_db, receiver, _setup(empty_db, tmp_path))
    with running_daemon(settings) as daemon:
        # Refused past the patience (0.5 s): then a dead letter.
        receiver.fail_for(30, status=400)
        sql(empty_db, """insert into docs values (1, '{"v": 1.5e-7}')""")
        daemon.caught_up()
        receiver.fail_for(0)
    capsys.readouterr()
    monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", receiver.url)
    flags = ["--dsn", empty_db, "--slot", settings.slot]
    assert cli_main(["deadletters", "show", "1", "--json", *flags]) == 0
    assert '"doc":{"v":0.00000015}' in capsys.readouterr().out
