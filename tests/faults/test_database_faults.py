"""Database faults while ``cdc-tracker run`` streams: restarts and killed backends.

The server here is this module's own (restarting the session server would disturb
other tests). The expected messageIds come from the table itself (two calls per
merchant, named by primary key), so rows the writer was unsure of still count.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from cdc_tracker.daemon.loop import Daemon
from cdc_tracker.daemon.shipping import DestinationShipper, Outcome
from cdc_tracker.destination.backoff import Backoff
from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.mapping import ids
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.testing.postgres import ThrowawayPostgres
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.faults.workload import (
    DaemonProcess,
    Delivery,
    daemon_env,
    daemon_group,
    dead_letters,
    insert_merchants,
    merchant_insert_ids,
)
from tests.harness import (
    EXAMPLES,
    WRITE_KEY,
    Running,
    create_slot,
    email_user_rulebook,
    flush_lsn,
    insert_name,
    running_daemon,
    settings_for,
    slot_position,
    sql,
    wait_until,
)

NS = "faults/database"
_databases = itertools.count(1)


@pytest.fixture(scope="module")
def server() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as own:
        yield own


@pytest.fixture
def own_db(server: ThrowawayPostgres) -> str:
    dsn = server.create_database(f"dbfault{next(_databases)}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((EXAMPLES / "schema.sql").read_text())
    return dsn


def _start(group_start: object, db: str, url: str) -> DaemonProcess:
    slot = f"cdc_tracker_{conninfo_to_dict(db)['dbname']}"
    env = daemon_env(db, slot, url, NS, CDC_TRACKER_BATCH_CALLS="20")
    process: DaemonProcess = group_start(env)  # type: ignore[operator]
    process.wait_for("reading slot")
    return process


def _caught_up(db: str, process: DaemonProcess, timeout: float = 30) -> None:
    end = flush_lsn(db)
    wait_until(
        lambda: slot_position(db) >= end or process.proc.poll() is not None, timeout
    )
    assert process.proc.poll() is None, "\n".join(process.lines[-20:])


def _assert_all_delivered(db: str, receiver: FakeRudderStack, merchants: int) -> None:
    expected = merchant_insert_ids(db, NS)
    delivery = Delivery.of(receiver.calls, expected)
    assert len(expected) == 2 * merchants
    assert delivery.lost == set()
    assert delivery.unexpected == set()
    assert delivery.differing_duplicates == []
    assert delivery.deliveries == len(expected) + delivery.duplicates
    assert dead_letters(db) == []


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart_mid_stream_then_reconnects_and_delivers_everything(
    server: ThrowawayPostgres, own_db: str, mode: Literal["fast", "immediate"]
) -> None:
    """A restart while 2,000 calls stream: the daemon waits it out, reconnects,
    and every call (and 400 more written after) arrives, repeats as the same id."""
    with FakeRudderStack(write_keys=[WRITE_KEY]) as receiver, daemon_group() as group:
        process = _start(group.start, own_db, receiver.url)
        insert_merchants(own_db, 1_000)
        receiver.wait_for_calls(100, timeout=20)
        server.restart(mode)
        process.wait_for("source unavailable")
        process.wait_for("reading slot", count=2, timeout=30)
        insert_merchants(own_db, 200)
        _caught_up(own_db, process)
        _assert_all_delivered(own_db, receiver, 1_200)


def _terminate_daemon_backends(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where application_name = 'cdc-tracker' and datname = current_database()"
        ).fetchall()
    return len(rows)


def test_killed_connections_are_reopened_and_nothing_is_lost(own_db: str) -> None:
    """The daemon's backends terminated three times mid-stream: it reconnects each
    time and all 1,500 merchants' calls arrive."""
    with FakeRudderStack(write_keys=[WRITE_KEY]) as receiver, daemon_group() as group:
        process = _start(group.start, own_db, receiver.url)
        for round_no in range(1, 4):
            insert_merchants(own_db, 500)
            receiver.wait_for_calls(1_000 * (round_no - 1) + 100, timeout=20)
            # The daemon's connection, its state connection and its stream.
            assert _terminate_daemon_backends(own_db) == 3
            process.wait_for("reading slot", count=round_no + 1, timeout=30)
        _caught_up(own_db, process)
        outages = process.events("source unavailable")
        assert len(outages) >= 3
        # The reason and its hint in fields of their own, not one in the other.
        assert all("\nhint" not in outage["error"] for outage in outages)
        assert all(outage["hint"] for outage in outages)
        _assert_all_delivered(own_db, receiver, 1_500)


class _CutOnFirstChange:
    """Wraps the mapper: terminates the daemon's backends as the first change of a
    window is mapped, so the connection dies in the middle of that window."""

    def __init__(self, running: Running, dsn: str) -> None:
        self.inner = running.daemon.mapper.map_encoded
        self.dsn = dsn
        self.cut = 0

    def __call__(self, *args: Any) -> None:
        if not self.cut:
            self.cut = _terminate_daemon_backends(self.dsn)
        self.inner(*args)


def test_connection_lost_mid_window_maps_the_window_once(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """Connection cut while a window is mapped: after the reconnect each call is
    sent once and the one dead letter counted and stored once."""
    rulebook = email_user_rulebook(tmp_path)
    settings = settings_for(db, receiver, rulebook, namespace=NS)
    with running_daemon(settings) as daemon:
        cutter = _CutOnFirstChange(daemon, db)
        daemon.daemon.mapper.map_encoded = cutter  # type: ignore[method-assign]
        sql(
            db,
            "insert into merchants (shop_domain, email) values "
            "('a', 'a@x.example'), ('b', null), ('c', 'c@x.example')",
        )
        daemon.caught_up()
        counters = daemon.daemon.counters
    assert cutter.cut == 3  # slot, state and stream connections
    assert counters.dead_letters == 1
    assert Counter(receiver.message_ids()) == Counter(
        ids.insert_id(NS, insert_name("identify public.merchants", rulebook), [key])
        for key in (1, 3)
    )
    assert len(dead_letters(db)) == 1


class _CutAfterFirstShipment(DestinationShipper):
    """Ships for real; after the first shipment terminates the daemon's backends,
    so the connection dies in the window that shipment came from."""

    def __init__(self, client: RudderStackClient, dsn: str) -> None:
        super().__init__(client)
        self.dsn = dsn
        self.cut = 0

    def ship(self, calls: list[EncodedCall], stop: threading.Event) -> Outcome:
        outcome = super().ship(calls, stop)
        if calls and not self.cut:
            self.cut = _terminate_daemon_backends(self.dsn)
        return outcome


def test_connection_lost_after_a_mid_transaction_shipment_loses_nothing(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """A 21-row transaction (shipped in part mid-way) then a 1-row one, read in one
    window whose connection dies: after the reconnect all 44 calls arrive."""
    settings = settings_for(db, receiver, example_rulebook, namespace=NS)
    settings = replace(settings, batch_calls=10)  # a shipment every 40 calls
    create_slot(settings)
    insert_merchants(db, 21, per_transaction=21)
    insert_merchants(db, 1)
    stop = threading.Event()
    with RudderStackClient(
        settings.destination_settings(), backoff=Backoff(initial=0.01, cap=0.05)
    ) as client:
        shipper = _CutAfterFirstShipment(client, db)
        daemon = Daemon(settings, load_rulebook(example_rulebook), shipper, stop)
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        try:
            end = flush_lsn(db)
            wait_until(lambda: slot_position(db) >= end, 20)
        finally:
            stop.set()
            thread.join(timeout=20)
    assert shipper.cut == 3  # slot, state and stream connections
    expected = merchant_insert_ids(db, NS)
    delivery = Delivery.of(receiver.calls, expected)
    assert len(expected) == 44
    assert delivery.lost == set()
    assert delivery.unexpected == set()
