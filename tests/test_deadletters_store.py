"""The dead-letter store keeps one letter per change and rule, crashes included."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from cdc_tracker.daemon.loop import Daemon
from cdc_tracker.daemon.shipping import DestinationShipper
from cdc_tracker.deadletters.schema import SCHEMA_SQL
from cdc_tracker.deadletters.store import DeadLetterStore
from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.model import NO_POSITION, DeadLetter, Lsn
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import (
    create_slot,
    email_user_rulebook,
    running_daemon,
    settings_for,
    sql,
)


def _letter(
    position: Lsn, ordinal: int, rule: str = "r", reason: str = "why"
) -> DeadLetter:
    return DeadLetter("public.t", rule, reason, position, ordinal, change={"k": 1})


def _stored(dsn: str) -> list[tuple[str, str, str, int, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select slot, rule, commit_lsn::text, ordinal, reason"
            " from cdc_tracker.dead_letters order by id"
        ).fetchall()
    return [(str(s), str(r), str(p), int(o), str(why)) for s, r, p, o, why in rows]


def test_a_letter_made_again_is_stored_once_and_replays_letters_all(
    empty_db: str,
) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        store = DeadLetterStore(conn, "s1")
        store.ensure_schema()
        store.save([_letter(Lsn(7), 0), _letter(Lsn(7), 0, rule="other")])
        # A restart reads the change again: the same letters, a second time.
        store.save([_letter(Lsn(7), 0, reason="again"), _letter(Lsn(7), 1)])
        # Two replays each store their first row's letter without a position.
        store.save([_letter(NO_POSITION, 1)])
        store.save([_letter(NO_POSITION, 1)])
        DeadLetterStore(conn, "s2").save([_letter(Lsn(7), 0)])

    assert _stored(empty_db) == [
        ("s1", "r", "0/7", 0, "why"),
        ("s1", "other", "0/7", 0, "why"),
        ("s1", "r", "0/7", 1, "why"),
        ("s1", "r", "0/0", 1, "why"),
        ("s1", "r", "0/0", 1, "why"),
        ("s2", "r", "0/7", 0, "why"),
    ]


def test_a_table_of_an_older_version_loses_its_repeated_letters_on_upgrade(
    empty_db: str,
) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("create schema cdc_tracker")
        conn.execute(SCHEMA_SQL)
        with conn.cursor() as cursor:
            cursor.executemany(
                "insert into cdc_tracker.dead_letters (slot, table_name, rule,"
                " reason, commit_lsn, ordinal, change)"
                " values ('s1', 'public.t', 'r', %s, %s, 1, '{}')",
                [
                    ("first", "0/7"),
                    ("repeat", "0/7"),
                    ("other", "0/8"),
                    ("replayed", "0/0"),
                    ("replayed again", "0/0"),
                ],
            )
        DeadLetterStore(conn, "s1").ensure_schema()

    assert [(row[2], row[4]) for row in _stored(empty_db)] == [
        ("0/7", "first"),
        ("0/8", "other"),
        ("0/0", "replayed"),
        ("0/0", "replayed again"),
    ]


def test_a_daemon_killed_after_storing_a_letter_stores_it_once(
    db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rulebook = email_user_rulebook(tmp_path)
    settings = settings_for(db, receiver, rulebook)
    create_slot(settings)
    sql(db, "insert into merchants (shop_domain, email) values ('a', null)")
    save = DeadLetterStore.save
    died = threading.Event()

    def save_then_die(store: DeadLetterStore, letters: list[Any]) -> None:
        save(store, letters)
        if letters:
            died.set()
            raise SystemExit(137)  # gone before the slot moved past the change

    monkeypatch.setattr(DeadLetterStore, "save", save_then_die)
    stop = threading.Event()
    with RudderStackClient(settings.destination_settings()) as client:
        daemon = Daemon(
            settings, load_rulebook(rulebook), DestinationShipper(client), stop
        )

        def run() -> None:
            with contextlib.suppress(SystemExit):
                daemon.run()

        thread = threading.Thread(target=run)
        thread.start()
        assert died.wait(20)
        thread.join(timeout=20)
        stop.set()
    monkeypatch.setattr(DeadLetterStore, "save", save)

    with running_daemon(settings) as again:
        again.caught_up()
        assert again.daemon.counters.dead_letters == 1  # made again, stored once

    assert len(_stored(db)) == 1


def test_the_dead_letters_of_a_huge_transaction_are_stored_as_it_is_read(
    db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every change of one transaction is a dead letter (no email): they are
    stored a few hundred at a time, not held whole until its commit."""
    settings = settings_for(db, receiver, email_user_rulebook(tmp_path), batch_calls=50)
    save = DeadLetterStore.save
    saved: list[int] = []

    def counting_save(store: DeadLetterStore, letters: list[DeadLetter]) -> None:
        saved.append(len(letters))
        save(store, letters)

    monkeypatch.setattr(DeadLetterStore, "save", counting_save)
    with running_daemon(settings) as daemon:
        sql(
            db,
            "insert into merchants (shop_domain)"
            " select 's' || g from generate_series(1, 1000) g",
        )
        daemon.caught_up()

    assert sum(saved) == 1000
    assert max(saved) <= 4 * 50
    assert len(_stored(db)) == 1000


def _replayed(shop_id: int, reason: str) -> tuple[str, str, str]:
    change = {"key": ["id"], "new": {"id": shop_id, "email": None}}
    return ("s1", reason, orjson.dumps(change).decode())


def test_an_older_table_keeps_one_letter_per_replayed_row_and_takes_new_ones(
    empty_db: str,
) -> None:
    """The first letter of a row keeps its id and takes the latest reason."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("create schema cdc_tracker")
        conn.execute(SCHEMA_SQL)
        with conn.cursor() as cursor:
            cursor.executemany(
                "insert into cdc_tracker.dead_letters (slot, table_name, rule,"
                " reason, commit_lsn, ordinal, change)"
                " values (%s, 'public.t', 'r', %s, '0/0', 1, %s::jsonb)",
                [
                    _replayed(1, "first"),
                    _replayed(2, "other row"),
                    _replayed(1, "latest"),
                    ("s2", "other slot", '{"key": ["id"], "new": {"id": 1}}'),
                ],
            )
        store = DeadLetterStore(conn, "s1")
        store.ensure_schema()
        upgraded = _stored(empty_db)
        again = {"key": ["id"], "new": {"id": 2}}
        store.save([DeadLetter("public.t", "r", "again", NO_POSITION, 9, again)])

    assert [row[4] for row in upgraded] == ["latest", "other row", "other slot"]
    assert _stored(empty_db) == [
        ("s1", "r", "0/0", 1, "latest"),
        ("s1", "r", "0/0", 9, "again"),
        ("s2", "r", "0/0", 1, "other slot"),
    ]
