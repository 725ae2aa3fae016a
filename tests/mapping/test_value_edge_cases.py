"""Values at the edges of their types, end to end (real WAL, daemon, strict fake):
each was once sent wrong or stopped the daemon."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psycopg

from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import running_daemon, settings_for, sql, wait_until

RULEBOOK = """\
version: 1
tables:
  public.v:
    user_id: id
identify:
  - table: v
    on: insert
    traits:
      value: value
"""


def _ship(
    db: str, receiver: FakeRudderStack, tmp_path: Path, column: str, *rows: str
) -> tuple[dict[str, Any], dict[str, int]]:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"create table v (id bigint primary key, value {column})")
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(RULEBOOK)
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        sql(db, *rows)
        daemon.caught_up()
        letters = daemon.daemon.counters.drops_by_reason
    return {str(c.user_id): c.payload["traits"] for c in receiver.calls}, letters


def test_enum_whose_name_starts_with_real_is_sent_as_its_label(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    # Types are matched by their whole name: real_estate is no real.
    sql(db, "create type real_estate as enum ('villa', 'flat')")
    traits, _ = _ship(
        db, receiver, tmp_path, "real_estate", "insert into v values (1, 'villa')"
    )
    assert traits["1"] == {"value": "villa"}


def test_nan_in_a_domain_over_numeric_is_null_not_a_lost_call(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    # As for the base types (wal2json writes null): a domain's value arrives as a
    # string, and its NaN must not make the whole call undeliverable.
    sql(db, "create domain amount as numeric")
    traits, letters = _ship(
        db,
        receiver,
        tmp_path,
        "amount",
        "insert into v values (1, 'NaN')",
        "insert into v values (2, 'Infinity')",
    )
    assert letters == {}
    assert traits == {"1": {"value": None}, "2": {"value": None}}


def test_deeply_nested_jsonb_is_a_dead_letter_not_a_dead_daemon(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    # PostgreSQL accepts this document and no parser of ours can nest that deep:
    # the rule's call is a dead letter, and the changes after it still flow.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("create table v (id bigint primary key, value jsonb)")
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(RULEBOOK)
    deep = "[" * 3000 + "1" + "]" * 3000
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        sql(
            db,
            "insert into v values (1, '{}')",
            f"insert into v values (2, '{deep}')",
            "insert into v values (3, '{}')",
        )
        with contextlib.suppress(AssertionError):  # judged below
            wait_until(
                lambda: (
                    daemon.error is not None
                    or (
                        len(receiver.calls) >= 2
                        and daemon.daemon.counters.dead_letters >= 1
                    )
                ),
                10,
            )
        error = daemon.error
        alive = daemon.thread.is_alive()
        letters = dict(daemon.daemon.counters.drops_by_reason)
    assert error is None, f"daemon died: {error!r}"
    assert alive
    assert sorted(str(c.user_id) for c in receiver.calls) == ["1", "3"]
    assert letters == {"cannot convert column 'value' of type jsonb": 1}
    with psycopg.connect(db) as conn:
        reasons = conn.execute("select reason from cdc_tracker.dead_letters").fetchall()
    assert reasons == [
        (
            "cannot convert column 'value' of type jsonb: "
            "the json document is nested too deeply",
        )
    ]
