"""A stop during a destination outage advances the slot to what was acknowledged,
so that a restart re-sends only what was not."""

from __future__ import annotations

import time
from dataclasses import replace
from email.message import Message
from pathlib import Path

import psycopg
import pytest

from cdc_tracker.daemon import window
from cdc_tracker.mapping import ids
from cdc_tracker.testing._rudder_checks import Answer
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.faults.workload import insert_merchants
from tests.harness import (
    WRITE_KEY,
    create_slot,
    insert_name,
    running_daemon,
    settings_for,
    slot_position,
    wait_until,
)

OUTAGE = Answer(503, "service unavailable\n")


class GoesDownAfter(FakeRudderStack):
    """Accepts the first ``n`` requests, then answers 503 to everything."""

    def __init__(self, n: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.allowed = n
        self.seen = 0

    def receive(self, path: str, headers: Message, raw: bytes) -> Answer | None:
        self.seen += 1
        if self.seen > self.allowed:
            return OUTAGE
        return super().receive(path, headers, raw)


@pytest.mark.parametrize("stream_closed", [False, True], ids=["open", "closed"])
def test_stop_during_outage_advances_to_what_was_acknowledged(
    db: str,
    example_rulebook: Path,
    monkeypatch: pytest.MonkeyPatch,
    stream_closed: bool,
) -> None:
    """The stream confirms the position; when a long outage has closed it first
    (after RELEASE_SECONDS, 0.5 s here) the slot is moved through SQL."""
    monkeypatch.setattr(window, "RELEASE_SECONDS", 0.5 if stream_closed else 60.0)
    receiver = GoesDownAfter(3, write_keys=[WRITE_KEY])
    with receiver:
        settings = replace(settings_for(db, receiver, example_rulebook), batch_calls=20)
        create_slot(settings)
        start = slot_position(db, settings.slot)
        # 40 transactions of 10 merchants: 20 calls each, a batch per commit.
        insert_merchants(db, 400, per_transaction=10)
        with running_daemon(settings) as running:
            wait_until(lambda: receiver.seen > 5, 20)  # 3 accepted, now retrying
            stream = running.daemon.window.stream
            assert stream is not None
            wait_until(lambda: stream.is_open != stream_closed, 10)
            running.stop()
        acknowledged = running.daemon.done
        assert len(receiver.calls) == 60
        after = slot_position(db, settings.slot)
        assert start < after == acknowledged, (
            "3 requests (60 calls, 3 whole transactions) were acknowledged, but the "
            f"slot is at {after}, not {acknowledged}"
        )


class FailsSlowlyOnce(FakeRudderStack):
    """Answers the ``n``-th request with 503 after ``delay`` seconds; accepts the
    rest, before and after."""

    def __init__(self, n: int, delay: float, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.failing = n
        self.delay = delay
        self.seen = 0

    def receive(self, path: str, headers: Message, raw: bytes) -> Answer | None:
        self.seen += 1
        if self.seen == self.failing:
            time.sleep(self.delay)
            return OUTAGE
        return super().receive(path, headers, raw)


def test_nothing_is_sent_after_a_batch_whose_delivery_a_stop_interrupted(
    db: str, example_rulebook: Path
) -> None:
    # Batches wait their turn for the shipping thread. Once the 4th request's
    # delivery is interrupted, the batches queued behind it must not go out, even
    # though the destination would take them: a later batch stored before an
    # earlier one would break per-user order when both are read again.
    receiver = FailsSlowlyOnce(4, delay=1.0, write_keys=[WRITE_KEY])
    with receiver:
        settings = replace(settings_for(db, receiver, example_rulebook), batch_calls=20)
        create_slot(settings)
        insert_merchants(db, 400, per_transaction=10)
        with running_daemon(settings) as running:
            wait_until(lambda: receiver.seen >= 4, 20)  # the 4th is being answered
            running.stop()
        assert receiver.seen == 4
        assert len(receiver.calls) == 60
        assert slot_position(db, settings.slot) == running.daemon.done


def test_a_letter_of_a_delivery_a_stop_interrupted_is_stored_once(
    db: str, example_rulebook: Path
) -> None:
    """A call refused in a delivery that a stop then interrupts is refused again
    when its window is read again after the restart: one letter, not two."""
    # The first request is refused for one call, which is refused alone and the
    # call after it taken; then 503 to everything, until the stop.
    first = GoesDownAfter(3, write_keys=[WRITE_KEY])
    second = FakeRudderStack(write_keys=[WRITE_KEY])
    with first, second:
        settings = replace(
            settings_for(db, first, example_rulebook, namespace="letters"),
            batch_calls=2,
        )
        create_slot(settings)
        insert_merchants(db, 2, per_transaction=2)
        with psycopg.connect(db) as conn:
            row = conn.execute("select min(id) from merchants").fetchone()
        assert row is not None
        identify = insert_name("identify public.merchants")
        refused = ids.insert_id("letters", identify, [row[0]])
        for receiver in (first, second):
            receiver.reject_message_ids([refused])
        with running_daemon(settings) as daemon:
            wait_until(lambda: first.seen > 4, 10)
            assert daemon.daemon.counters.dead_letters == 0
        with running_daemon(replace(settings, destination_url=second.url)) as again:
            again.caught_up()
    with psycopg.connect(db) as conn:
        stored = conn.execute(
            "select call->>'messageId' from cdc_tracker.dead_letters"
        ).fetchall()
    assert stored == [(refused,)]
