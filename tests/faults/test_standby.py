"""Two daemons on one slot: one ships, one stands by and takes over after kill -9."""

from __future__ import annotations

import time
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.faults.workload import (
    Delivery,
    daemon_env,
    daemon_group,
    dead_letters,
    insert_merchants,
    merchant_insert_ids,
)
from tests.harness import flush_lsn, slot_position, wait_until

NS = "faults/standby"
STANDING_BY = "standing by: another cdc-tracker holds the slot"


def test_standby_ships_nothing_then_takes_over_within_seconds_of_a_kill(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """While the first daemon lives the second only stands by; kill -9 the first
    mid-stream and the second reads the slot within 5 s; all 2,400 calls arrive,
    repeats as the same messageId."""
    slot = f"cdc_tracker_{conninfo_to_dict(db)['dbname']}"
    env = daemon_env(db, slot, receiver.url, NS, CDC_TRACKER_BATCH_CALLS="20")
    with daemon_group() as group:
        active = group.start(env)
        active.wait_for("reading slot")
        standby = group.start(env)
        standby.wait_for(STANDING_BY)

        insert_merchants(db, 1_000)
        receiver.wait_for_calls(400, timeout=20)
        assert standby.events("reading slot") == []
        assert standby.events("batch shipped") == []
        assert active.events("batch shipped") != []

        active.kill()
        killed_at = time.monotonic()
        standby.wait_for("reading slot", timeout=10)
        takeover = time.monotonic() - killed_at

        insert_merchants(db, 200)
        end = flush_lsn(db)
        wait_until(lambda: slot_position(db, slot) >= end, 30)
        assert standby.proc.poll() is None
        assert standby.events("batch shipped") != []

    assert takeover < 5.0
    expected = merchant_insert_ids(db, NS)
    delivery = Delivery.of(receiver.calls, expected)
    assert len(expected) == 2_400
    assert delivery.lost == set()
    assert delivery.unexpected == set()
    assert delivery.differing_duplicates == []
    assert delivery.deliveries == len(expected) + delivery.duplicates
    assert dead_letters(db) == []
