"""kill -9 at random moments: nothing lost, duplicates only as the same messageId."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.faults.workload import (
    Delivery,
    WatchedReceiver,
    Writer,
    daemon_env,
    daemon_group,
    dead_letters,
    first_occurrences_by_user,
)
from tests.harness import (
    WRITE_KEY,
    create_slot,
    flush_lsn,
    running_daemon,
    settings_for,
    slot_position,
    wait_until,
)

SEED = 20_240_611
NAMESPACE = "faults/kill9"
# Where each kill lands: in a read, in a request held by the receiver, or just
# after a request was acknowledged (before the slot is advanced past it).
MOMENTS = ["read"] * 4 + ["send"] * 3 + ["after_send"] * 3


def _wait_quietly(predicate: object, timeout: float) -> bool:
    """Wait for ``predicate``; False when it did not come (the kill goes ahead)."""
    try:
        wait_until(predicate, timeout)  # type: ignore[arg-type]
    except AssertionError:
        return False
    return True


def _kill_at(moment: str, rng: random.Random, receiver: WatchedReceiver) -> bool:
    """Wait for ``moment`` to come; returns whether it came before the kill."""
    if moment == "read":
        time.sleep(rng.uniform(0.0, 0.3))
        return True
    if moment == "send":
        arrivals = receiver.arrivals
        receiver.stall_next(1, 2.5)
        came = _wait_quietly(lambda: receiver.arrivals > arrivals, 5)
        time.sleep(rng.uniform(0.0, 0.2))
        return came
    accepted = receiver.accepted_count
    return _wait_quietly(lambda: receiver.accepted_count > accepted, 5)


def test_kill9_at_random_moments_loses_nothing_and_keeps_per_user_order(
    db: str, example_rulebook: Path
) -> None:
    """Ten SIGKILLs over a stream of ~3,000 changes: every expected messageId
    arrives, repeats carry the same call, each user's calls keep commit order."""
    rng = random.Random(SEED)
    dbname = conninfo_to_dict(db)["dbname"]
    with (
        WatchedReceiver(write_keys=[WRITE_KEY]) as receiver,
        FakeRudderStack(write_keys=[WRITE_KEY]) as reference,
    ):
        slot = f"kill9_{dbname}"
        ref_settings = settings_for(
            db, reference, example_rulebook, slot=f"ref_{dbname}", namespace=NAMESPACE
        )
        create_slot(replace(ref_settings, slot=slot))
        create_slot(ref_settings)
        env = daemon_env(
            db,
            slot,
            receiver.url,
            NAMESPACE,
            CDC_TRACKER_BATCH_CALLS="20",
            CDC_TRACKER_WINDOW_CHANGES="300",
        )

        writer = Writer(db, SEED, target=3_000, pause=0.2).start()
        landed: Counter[str] = Counter()
        with daemon_group() as group:
            for moment in rng.sample(MOMENTS, len(MOMENTS)):
                daemon = group.start(env)
                daemon.wait_for("reading slot")
                if _kill_at(moment, rng, receiver):
                    landed[moment] += 1
                daemon.kill()
            tally = writer.join()
            end = flush_lsn(db)
            final = group.start(env)
            wait_until(lambda: slot_position(db, slot) >= end, 40)
            final.kill()

        with running_daemon(ref_settings) as clean:
            clean.caught_up(timeout=30)
            ref_changes = clean.daemon.counters.changes
        expected = reference.calls
        got = receiver.calls

    expected_ids = {str(call.message_id) for call in expected}
    delivery = Delivery.of(got, expected_ids)
    assert landed == Counter(read=4, send=3, after_send=3)
    assert tally.changes >= 3_000
    assert ref_changes == tally.changes
    assert len(expected) == len(expected_ids) == tally.calls
    assert delivery.lost == set()
    assert delivery.unexpected == set()
    assert delivery.differing_duplicates == []
    assert delivery.deliveries == tally.calls + delivery.duplicates
    assert dead_letters(db) == []
    assert first_occurrences_by_user(got) == first_occurrences_by_user(expected)
