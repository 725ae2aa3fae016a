"""A json column takes what jsonb and JSON encoders refuse: a lone surrogate
escape, a number of any exponent. Such a value reaches the destination or a dead
letter, and never stops the pipeline, before or after a restart."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import running_daemon, settings_for, sql

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


def _letters(db: str) -> list[tuple[str, str]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "select reason, call->'properties'->'doc'->>'v' "
            "from cdc_tracker.dead_letters"
        ).fetchall()
    return [(str(reason), str(value)) for reason, value in rows]


def test_a_lone_surrogate_is_a_dead_letter_and_a_restart_goes_on(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    settings = settings_for(empty_db, receiver, _setup(empty_db, tmp_path))
    with running_daemon(settings) as daemon:
        sql(
            empty_db,
            """insert into docs values (1, '{"v": "a\\ud800b"}')""",
            """insert into docs values (2, '{"v": 1}')""",
        )
        daemon.caught_up()
    with running_daemon(settings) as daemon:
        sql(empty_db, """insert into docs values (3, '{"v": 3}')""")
        daemon.caught_up()
    assert [call.user_id for call in receiver.calls] == ["2", "3"]
    [(reason, stored)] = _letters(empty_db)
    assert reason.startswith("cannot encode: call cdct-")
    assert stored == "a\ufffdb"  # jsonb holds no lone surrogate


@pytest.mark.parametrize("number", ["1e-100000", "-2.5E+200000"])
def test_a_number_beyond_numeric_is_sent_as_written(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path, number: str
) -> None:
    """Not written out as 100,000 zeros; and refused, it is kept as its text."""
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
    assert _letters(empty_db) == [
        ("refused by the destination with status 400", number.upper())
    ]
