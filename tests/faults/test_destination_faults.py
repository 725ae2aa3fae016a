"""Destination faults end to end: the real daemon, client, receiver and server.

Each test counts exactly: calls produced, delivered, duplicated, dead-lettered and
lost. The daemon runs in a thread (``tests.harness.running_daemon``) with retry
delays shrunk to milliseconds, except the 401 test, which runs ``cdc-tracker run``
to read the log line an operator would see.
"""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from cdc_tracker.destination.stats import DeliveryStats
from cdc_tracker.mapping import ids
from cdc_tracker.ops.health import Probe
from cdc_tracker.settings import Settings
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.faults.workload import (
    IDENTIFY,
    Delivery,
    daemon_env,
    daemon_group,
    dead_letters,
    insert_merchants,
    merchant_insert_ids,
)
from tests.harness import (
    WRITE_KEY,
    Running,
    flush_lsn,
    insert_name,
    running_daemon,
    settings_for,
    slot_position,
    sql,
    wait_until,
)

NS = "faults/destination"


def _settings(
    db: str, receiver: FakeRudderStack, rulebook: Path, **extra: object
) -> Settings:
    return settings_for(db, receiver, rulebook, namespace=NS, **extra)


def _stats(daemon: Running) -> DeliveryStats:
    return daemon.daemon.window.shipper.client.stats  # type: ignore[attr-defined,no-any-return]


def _exactly_once(receiver: FakeRudderStack, expected: set[str]) -> Delivery:
    delivery = Delivery.of(receiver.calls, expected)
    assert delivery.lost == set()
    assert delivery.unexpected == set()
    assert delivery.duplicates == 0
    assert delivery.deliveries == len(expected)
    return delivery


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_refused_connections_then_a_receiver_on_that_port_gets_everything(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Nothing listens: retried, slot held; a receiver appears: all 60 calls arrive."""
    port = _free_port()
    settings = replace(
        _settings(db, receiver, example_rulebook),
        destination_url=f"http://127.0.0.1:{port}",
    )
    with running_daemon(settings) as daemon:
        daemon.caught_up()
        floor = insert_merchants(db, 30)
        wait_until(
            lambda: _stats(daemon).errors_by_status.get("connection", 0) >= 5, 10
        )
        assert slot_position(db) <= floor
        with FakeRudderStack(write_keys=[WRITE_KEY], port=port) as late:
            daemon.caught_up()
            _exactly_once(late, merchant_insert_ids(db, NS))
    assert slot_position(db) > floor
    assert dead_letters(db) == []


def test_long_503_outage_stops_reading_and_holds_the_slot(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """While every request gets 503, the daemon reads at most one window ahead and
    does not advance; after the outage all 2,000 calls arrive once."""
    settings = _settings(
        db, receiver, example_rulebook, window_changes=100, batch_calls=20
    )
    with running_daemon(settings) as daemon:
        daemon.caught_up()
        receiver.fail_for(60, status=503)
        floor = insert_merchants(db, 1_000)
        receiver.wait_for_requests(20)
        read_early = daemon.daemon.counters.changes
        time.sleep(1.5)
        read_late = daemon.daemon.counters.changes
        assert read_early == read_late <= settings.window_changes
        assert receiver.calls == []
        assert slot_position(db) <= floor
        receiver.fail_for(0)
        daemon.caught_up(timeout=30)
        assert daemon.daemon.counters.changes == 1_000
    _exactly_once(receiver, merchant_insert_ids(db, NS))
    assert slot_position(db) > floor


def test_a_destination_answering_400_to_everything_is_waited_out(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """A gateway answering 400 to every request for a while is an outage, not
    300 bad calls: nothing is dead-lettered, everything arrives once after it."""
    settings = _settings(db, receiver, example_rulebook, refusal_patience=600.0)
    with running_daemon(settings) as daemon:
        daemon.caught_up()
        receiver.fail_for(2, status=400)
        insert_merchants(db, 150, per_transaction=150)
        wait_until(lambda: _stats(daemon).refusing, 10)
        probe = Probe(daemon.daemon.counters, _stats(daemon), lambda: True, 60)
        assert probe.not_ready() == (
            "destination refuses every call it is sent (resending them)"
        )
        daemon.caught_up(timeout=30)
        assert daemon.daemon.counters.dead_letters == 0
        assert not _stats(daemon).refusing
    _exactly_once(receiver, merchant_insert_ids(db, NS))
    assert dead_letters(db) == []
    assert any(request.status == 400 for request in receiver.requests)


def test_429_with_retry_after_waits_that_long_between_requests(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Two 429s asking for 1 s: the next requests come no sooner, then both calls."""
    with running_daemon(_settings(db, receiver, example_rulebook)) as daemon:
        daemon.caught_up()
        receiver.fail_next(2, status=429, retry_after="1")
        insert_merchants(db, 1)
        daemon.caught_up()
    first, second, third = receiver.requests
    assert [first.status, second.status, third.status] == [429, 429, 200]
    assert 0.95 <= second.arrived - first.arrived < 2.0
    assert 0.95 <= third.arrived - second.arrived < 2.0
    _exactly_once(receiver, merchant_insert_ids(db, NS))


def test_requests_stalled_past_the_client_timeout_are_sent_again(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Two requests held past the 0.5 s timeout: two timeouts, then 10 calls once."""
    settings = _settings(db, receiver, example_rulebook, http_timeout=0.5)
    with running_daemon(settings) as daemon:
        daemon.caught_up()
        receiver.stall_next(2, 1.5)
        insert_merchants(db, 5)
        daemon.caught_up()
        assert _stats(daemon).errors_by_status == {"timeout": 2}
    receiver.wait_for_requests(3)
    assert sorted(r.fault or "" for r in receiver.requests) == ["", "stall", "stall"]
    _exactly_once(receiver, merchant_insert_ids(db, NS))


def test_dropped_connections_are_sent_again(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Three requests closed unanswered: retried, then the 10 calls arrive once."""
    with running_daemon(_settings(db, receiver, example_rulebook)) as daemon:
        daemon.caught_up()
        receiver.drop_next(3)
        insert_merchants(db, 5)
        daemon.caught_up()
        assert _stats(daemon).errors_by_status == {"connection": 3}
    assert receiver.statuses() == [None, None, None, 200]
    _exactly_once(receiver, merchant_insert_ids(db, NS))


def test_bad_write_key_pauses_loudly_then_recovers_when_the_key_is_accepted(
    db: str, example_rulebook: Path
) -> None:
    """401: an error line naming the status and the write key setting, no advance,
    nothing dropped; once the receiver accepts the key, the 6 calls arrive once."""
    slot = f"cdc_tracker_{conninfo_to_dict(db)['dbname']}"
    with (
        FakeRudderStack(write_keys=["another-key"]) as receiver,
        daemon_group() as group,
    ):
        process = group.start(daemon_env(db, slot, receiver.url, NS))
        process.wait_for("reading slot")
        floor = insert_merchants(db, 3)
        process.wait_for("destination refuses our settings, delivery paused")
        receiver.wait_for_requests(2)
        assert slot_position(db) <= floor
        assert receiver.calls == []

        receiver.write_keys.add(WRITE_KEY)
        process.wait_for("destination recovered")
        wait_until(lambda: slot_position(db) >= flush_lsn(db), 10)

        paused = process.events("destination refuses our settings, delivery paused")
        assert paused[0]["level"] == "error"
        assert paused[0]["status"] == "401"
        assert "answered 401" in paused[0]["error"]
        assert "RUDDERSTACK_WRITE_KEY" in paused[0]["hint"]
        assert "\nhint" not in paused[0]["error"]
        assert WRITE_KEY not in "\n".join(process.lines)
        assert {r.status for r in receiver.requests} == {401, 200}
        _exactly_once(receiver, merchant_insert_ids(db, NS))
    assert dead_letters(db) == []


def test_400_is_bisected_to_dead_letter_exactly_the_refused_calls(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Two refused calls among 80: those two in dead_letters, the other 78 arrive."""
    refused = {
        ids.insert_id(NS, insert_name(IDENTIFY), [7]),
        ids.insert_id(NS, "Merchant Installed", [23]),
    }
    receiver.reject_message_ids(refused)
    with running_daemon(_settings(db, receiver, example_rulebook)) as daemon:
        insert_merchants(db, 40, per_transaction=40)
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 2
    _exactly_once(receiver, merchant_insert_ids(db, NS) - refused)
    letters = dead_letters(db)
    assert {message_id for _, _, message_id in letters} == refused
    # Each keeps the destination's own words, which name the call refused.
    assert {reason for _, reason, message_id in letters} == {
        "refused by the destination with status 400: batch[0]: messageId "
        f"'{message_id}' rejected by test"
        for message_id in refused
    }


def test_413_is_split_until_every_request_fits(db: str, example_rulebook: Path) -> None:
    """A receiver taking 4,000 bytes a request: 413s, smaller requests, all 120
    calls delivered once, none dead-lettered."""
    with FakeRudderStack(write_keys=[WRITE_KEY], max_body_bytes=4_000) as receiver:
        with running_daemon(_settings(db, receiver, example_rulebook)) as daemon:
            insert_merchants(db, 60, per_transaction=60)
            daemon.caught_up()
        statuses = receiver.statuses()
        _exactly_once(receiver, merchant_insert_ids(db, NS))
        accepted = [r for r in receiver.requests if r.status == 200]
        assert 413 in statuses
        assert max(r.body_bytes for r in accepted) <= 4_000
    assert dead_letters(db) == []


def test_a_call_over_32_kb_is_a_dead_letter_and_the_rest_arrive(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """A 40 KB owner name: its identify is dead-lettered, the other 19 calls arrive."""
    with running_daemon(_settings(db, receiver, example_rulebook)) as daemon:
        insert_merchants(db, 4, per_transaction=4)
        sql(
            db,
            "insert into merchants (id, shop_domain, owner_name) "
            "values (100, 'big.myshopify.com', repeat('x', 40000))",
        )
        insert_merchants(db, 5, per_transaction=5)
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 1
        # Counted on /metrics by its kind, not by its size.
        assert daemon.daemon.counters.drops_by_reason == {
            "over the 32000-byte per-call limit": 1
        }
    too_big = ids.insert_id(NS, insert_name(IDENTIFY), [100])
    _exactly_once(receiver, merchant_insert_ids(db, NS) - {too_big})
    [(rule, reason, message_id)] = dead_letters(db)
    # The letter holds the change, not the call: a retry maps it again, with a
    # rulebook that may no longer make it this large.
    assert (rule, message_id) == (IDENTIFY, None)
    assert "over the 32000-byte per-call limit" in reason
    with psycopg.connect(db) as conn:
        assert conn.execute(
            "select change->'new'->>'id' from cdc_tracker.dead_letters"
        ).fetchall() == [("100",)]
