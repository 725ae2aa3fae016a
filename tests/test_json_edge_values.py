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

from cdc_tracker.deadletters.store import ALTERED
from cdc_tracker.replay.main import run_replay
from cdc_tracker.replay.runner import ReplayOptions
from cdc_tracker.settings import Settings
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import WRITE_KEY, cli_main, running_daemon, settings_for, sql

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


def _retry_all(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", settings.destination_url)
    monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", WRITE_KEY)
    flags = ["--dsn", settings.dsn, "--slot", settings.slot]
    return cli_main(
        ["deadletters", "retry", "--all", *flags, "--rulebook", str(settings.rulebook)]
    )


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
        ('{"v": "a\\ud800b"}', "cannot encode: call cdct-"),
        ("[" * 300 + "]" * 300, "cannot encode: call cdct-"),
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
    assert _retry_all(settings, monkeypatch) == 1
    assert [call.user_id for call in receiver.calls] == ["2", "3"]
    [(still, _, _)] = _letters(empty_db)
    assert still.startswith(why)


@pytest.mark.parametrize("number", ["1e-100000", "-2.5E+200000"])
def test_a_number_beyond_numeric_is_sent_as_written_and_never_resent_altered(
    empty_db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    number: str,
) -> None:
    """Not written out as 100,000 zeros. Refused, its letter keeps it as text
    (jsonb cannot hold it) and says so; a retry refuses to send it so altered."""
    settings = settings_for(empty_db, receiver, _setup(empty_db, tmp_path))
    with running_daemon(settings) as daemon:
        sql(empty_db, f"""insert into docs values (1, '{{"v": {number}}}')""")
        daemon.caught_up()
        receiver.fail_next(1, status=400)
        sql(empty_db, f"""insert into docs values (2, '{{"v": {number}}}')""")
        daemon.caught_up()
        sql(empty_db, """insert into docs values (3, '{"v": 3}')""")
        daemon.caught_up()
    sent, after = receiver.calls
    assert f'"doc":{{"v":{number.upper()}}}'.encode() in sent.raw
    assert after.user_id == "3"
    [(reason, _, call)] = _letters(empty_db)
    assert reason == "refused by the destination with status 400"
    assert call["properties"]["doc"] == {"v": number.upper()}
    assert call[ALTERED] == ["numbers beyond numeric are stored as text"]

    assert _retry_all(settings, monkeypatch) == 1
    assert len(receiver.calls) == 2
    [(still, _, _)] = _letters(empty_db)
    assert still == (
        "stored altered (numbers beyond numeric are stored as text), so it cannot "
        "be sent as it was made; replay its row instead"
    )


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
