"""The replication stream: the connection outlives a long destination outage, the
slot moves only when told, and the walsender is ours alone."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace
from email.message import Message
from pathlib import Path

import pytest

from cdc_tracker.daemon import window
from cdc_tracker.errors import ConfigError, SlotBusy
from cdc_tracker.source.connection import connect
from cdc_tracker.source.slot import Slot
from cdc_tracker.source.stream import Stream
from cdc_tracker.testing._rudder_checks import Answer
from cdc_tracker.testing.postgres import ThrowawayPostgres
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.faults.workload import insert_merchants
from tests.harness import (
    EXAMPLES,
    WRITE_KEY,
    create_slot,
    running_daemon,
    settings_for,
    slot_position,
    sql,
    wait_until,
    walsender_pid,
)


class DownFor(FakeRudderStack):
    """Answers 503 from its second request on, for ``seconds``; then accepts."""

    def __init__(self, seconds: float, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.seconds = seconds
        self.down_since: float | None = None
        self.refused = 0

    def receive(self, path: str, headers: Message, raw: bytes) -> Answer | None:
        if self.down_since is None and self.calls:
            self.down_since = time.monotonic()
        if self.down_since and time.monotonic() - self.down_since < self.seconds:
            self.refused += 1
            return Answer(503, "service unavailable\n")
        return super().receive(path, headers, raw)


def test_an_outage_longer_than_wal_sender_timeout_keeps_the_stream(
    db: str, example_rulebook: Path
) -> None:
    """The server drops a client silent for wal_sender_timeout (1 s here): while
    the destination is down for 4 s the daemon keeps telling it it is there, so
    the same stream carries on and every call arrives once."""
    receiver = DownFor(4.0, write_keys=[WRITE_KEY])
    with receiver:
        settings = replace(
            settings_for(
                db + " options='-c wal_sender_timeout=1s'", receiver, example_rulebook
            ),
            batch_calls=20,
        )
        create_slot(settings)
        with running_daemon(settings) as running:
            insert_merchants(db, 10, per_transaction=10)
            wait_until(lambda: len(receiver.calls) == 20, 10)
            walsender = walsender_pid(db, settings.slot)
            insert_merchants(db, 100, per_transaction=10)
            wait_until(lambda: len(receiver.calls) == 220, 30)
            running.caught_up()
            assert receiver.refused > 0
            assert walsender_pid(db, settings.slot) == walsender is not None
        assert len(set(receiver.message_ids())) == 220


def test_reading_moves_nothing_until_confirmed(db: str) -> None:
    """Rows streamed are not consumed: a stream opened again gets them again, and
    once confirmed they are gone."""
    sql(db, "create table notes (id int primary key, body text)")
    with connect(db) as conn:
        Slot(conn, "stream_confirm").ensure(create=True)
    start = slot_position(db, "stream_confirm")
    sql(db, "insert into notes values (1, 'a'), (2, 'b')")

    def read_all(confirm: bool) -> list[bytes]:
        stream = Stream(db, "stream_confirm", ["public.notes"], [])
        stream.open()
        rows = []
        while (data := stream.read(0.5)) is not None:
            rows.append(bytes(data))
        if confirm:
            stream.confirm(stream.sent_upto)
        stream.close()
        return rows

    first = read_all(confirm=False)
    assert [row[:14] for row in first] == [b'{"action":"B",'] + [
        b'{"action":"I",'
    ] * 2 + [b'{"action":"C",']
    assert slot_position(db, "stream_confirm") == start
    assert read_all(confirm=True) == first
    assert slot_position(db, "stream_confirm") > start
    assert read_all(confirm=False) == []


def test_a_long_wait_for_rows_ends_soon_after_a_stop(db: str) -> None:
    """A large poll_interval must not hold up a SIGTERM: the wait looks at the
    stop while no row comes."""
    with connect(db) as conn:
        Slot(conn, "stream_stop").ensure(create=True)
    stop = threading.Event()
    stream = Stream(db, "stream_stop", ["public.merchants"], [], stop=stop)
    stream.open()
    try:
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        # Other transactions of the database (an autovacuum's ANALYZE, say) may
        # send their begin and commit rows meanwhile: only those.
        while (row := stream.read(3600.0)) is not None:
            assert row.startswith((b'{"action":"B"', b'{"action":"C"')), row
        assert time.monotonic() - started < 2.0
    finally:
        stream.close()


def test_a_long_wait_for_rows_still_sends_our_status_as_often_as_due(
    db: str,
) -> None:
    """However long one read waits, the status goes out every status_seconds."""
    with connect(db) as conn:
        Slot(conn, "stream_status").ensure(create=True)
    stream = Stream(db, "stream_status", ["public.merchants"], [])
    stream.open()
    sent: list[float] = []
    send = stream.send_status
    stream.send_status = lambda: (sent.append(time.monotonic()), send())  # type: ignore[method-assign]
    try:
        stream.status_seconds = 0.5
        # Rows of other transactions of the database (their B and C rows) may
        # come: each read waits on until three seconds are over.
        ends = time.monotonic() + 3.0
        while (left := ends - time.monotonic()) > 0:
            stream.read(left)
    finally:
        stream.close()
    # Looked at between waits of at most 0.2 s: due, then sent within that.
    assert len(sent) >= 4
    assert max(b - a for a, b in itertools.pairwise(sent)) < 1.5


def test_a_second_stream_on_the_slot_is_refused_as_busy(db: str) -> None:
    with connect(db) as conn:
        Slot(conn, "stream_busy").ensure(create=True)
    first = Stream(db, "stream_busy", ["public.merchants"], [])
    first.open()
    try:
        with pytest.raises(SlotBusy, match="in use by another process"):
            Stream(db, "stream_busy", ["public.merchants"], []).open()
    finally:
        first.close()
    wait_until(lambda: walsender_pid(db, "stream_busy") is None, 5)


def test_a_role_without_replication_is_a_configuration_error(db: str) -> None:
    """Retrying cannot fix it: the daemon exits 2 instead of retrying forever."""
    sql(db, "create role stream_plain login")
    try:
        with connect(db) as conn:
            Slot(conn, "stream_plain").ensure(create=True)
        plain = Stream(db + " user=stream_plain", "stream_plain", [], [])
        with pytest.raises(ConfigError, match="superuser or replication role"):
            plain.open()
    finally:
        sql(db, "drop role stream_plain")


def test_a_long_outage_does_not_hold_up_a_postgresql_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stream's server process waits for us to confirm what it sent before
    PostgreSQL can shut down: a delivery failing past RELEASE_SECONDS closes the
    stream, a fast shutdown goes through, and after the restart and the outage
    every call arrives."""
    monkeypatch.setattr(window, "RELEASE_SECONDS", 1.0)
    with (
        ThrowawayPostgres() as server,
        FakeRudderStack(write_keys=[WRITE_KEY]) as receiver,
    ):
        dsn = server.create_database("shutdown")
        sql(dsn, (EXAMPLES / "schema.sql").read_text())
        settings = settings_for(dsn, receiver, EXAMPLES / "rulebook.yaml")
        with running_daemon(settings) as running:
            insert_merchants(dsn, 5)
            running.caught_up()
            receiver.fail_for(300)
            insert_merchants(dsn, 5)
            receiver.wait_for_requests(3)
            began = time.monotonic()
            server.stop("fast")
            took = time.monotonic() - began
            server.start()
            receiver.fail_for(0)
            running.caught_up(30)
        assert took < 8, f"the shutdown waited {took:.1f} s for the stream"
        assert len(set(receiver.message_ids())) == 20
