"""Nothing lost: the slot follows the acknowledgements; restarts resend the same ids."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from structlog.testing import capture_logs

from cdc_tracker.daemon.loop import Daemon
from cdc_tracker.daemon.shipping import DestinationShipper, Outcome
from cdc_tracker.daemon.window import Window
from cdc_tracker.destination.backoff import Backoff
from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.mapping import ids
from cdc_tracker.model import Lsn
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.source.stream import Stream
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import (
    create_slot,
    email_user_rulebook,
    flush_lsn,
    insert_name,
    running_daemon,
    settings_for,
    slot_position,
    sql,
    transaction,
    wait_until,
)


def _merchants(n: int, start: int = 0) -> str:
    rows = ", ".join(
        f"('shop{i}.myshopify.com', 'Owner {i}', 'basic', 'EUR')"
        for i in range(start, start + n)
    )
    columns = "shop_domain, owner_name, plan_name, currency"
    return f"insert into merchants ({columns}) values {rows}"


def test_destination_outage_holds_the_slot_then_everything_arrives(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Delivery fails -> slot not advanced; once the destination is back, all arrive."""
    settings = settings_for(db, receiver, example_rulebook)
    with running_daemon(settings) as daemon:
        daemon.caught_up()
        receiver.fail_for(60, status=503)
        sql(db, _merchants(3))
        written = flush_lsn(db)  # at or past the end of the merchants' commit
        wait_until(lambda: len(receiver.requests) >= 3, 10)
        assert receiver.calls == []
        assert slot_position(db) < written
        receiver.fail_for(0)
        daemon.caught_up()
    assert len(receiver.calls) == 6
    assert slot_position(db) >= written


class _CrashAfterShipping:
    """Ships for real, then dies before the daemon can advance (like kill -9)."""

    def __init__(self, inner: DestinationShipper) -> None:
        self.inner = inner
        self.shipped = threading.Event()

    def ship(self, calls: list[EncodedCall], stop: threading.Event) -> Outcome:
        outcome = self.inner.ship(calls, stop)
        if calls:
            self.shipped.set()
            raise SystemExit("simulated crash between send and advance")
        return outcome


def test_crash_between_send_and_advance_resends_with_the_same_message_ids(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Delivered but not advanced -> after a restart the calls come again, same ids."""
    settings = settings_for(db, receiver, example_rulebook)
    create_slot(settings)
    sql(db, _merchants(4))
    stop = threading.Event()
    with RudderStackClient(settings.destination_settings()) as client:
        crashing = _CrashAfterShipping(DestinationShipper(client))
        daemon = Daemon(settings, load_rulebook(settings.rulebook), crashing, stop)
        thread = threading.Thread(target=_swallow_exit(daemon.run))
        thread.start()
        thread.join(timeout=20)
        stop.set()
    assert crashing.shipped.is_set()
    first = receiver.message_ids()
    assert len(first) == 8

    with running_daemon(settings) as daemon2:
        daemon2.caught_up()
    counts = Counter(receiver.message_ids())
    assert set(counts) == set(first)
    assert all(n == 2 for n in counts.values())


def _swallow_exit(run: object) -> object:
    def target() -> None:
        with contextlib.suppress(SystemExit):
            run()  # type: ignore[operator]

    return target


def test_big_transaction_is_shipped_in_bounded_batches_and_windows(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """A 1,500-row transaction, windows of 100 rows, batches of 40: all arrives."""
    settings = settings_for(
        db, receiver, example_rulebook, window_changes=100, batch_calls=40
    )
    with running_daemon(settings) as daemon:
        sql(db, _merchants(1500))
        for i in range(5):
            sql(db, _merchants(1, start=2000 + i))
        daemon.caught_up(timeout=60)
    ids_seen = receiver.message_ids()
    assert len(ids_seen) == 2 * 1505
    assert len(set(ids_seen)) == len(ids_seen)
    assert max(r.n_calls for r in receiver.requests) <= 40


def test_commit_between_peek_and_advance_is_not_lost(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """A transaction committed while a window is shipped is delivered later."""
    settings = settings_for(db, receiver, example_rulebook)

    class CommitWhileShipping(DestinationShipper):
        done = False

        def ship(self, calls: list[EncodedCall], stop: threading.Event) -> Outcome:
            if calls and not self.done:
                self.done = True
                sql(db, _merchants(1, start=900))
            return super().ship(calls, stop)

    create_slot(settings)
    sql(db, _merchants(1))
    stop = threading.Event()
    with RudderStackClient(settings.destination_settings()) as client:
        daemon = Daemon(
            settings,
            load_rulebook(settings.rulebook),
            CommitWhileShipping(client),
            stop,
        )
        thread = threading.Thread(target=daemon.run)
        thread.start()
        target = None
        try:
            wait_until(lambda: len(receiver.calls) >= 2, 10)
            target = flush_lsn(db)
            wait_until(lambda: daemon.done >= target, 10)
        finally:
            stop.set()
            thread.join(timeout=20)
    users = sorted({c.payload["userId"] for c in receiver.calls})
    assert users == ["1", "2"]
    assert len(receiver.calls) == 4


def test_unmappable_change_becomes_a_dead_letter_and_the_rest_goes_on(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """A null userId is stored in cdc_tracker.dead_letters with its reason."""
    rulebook = email_user_rulebook(tmp_path)
    settings = settings_for(db, receiver, rulebook)
    with running_daemon(settings) as daemon:
        sql(
            db,
            "insert into merchants (shop_domain, email) values ('a', 'a@x.example')",
            "insert into merchants (shop_domain, email) values ('b', null)",
            "insert into merchants (shop_domain, email) values ('c', 'c@x.example')",
        )
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 1
    assert [c.payload["userId"] for c in receiver.calls] == [
        "a@x.example",
        "c@x.example",
    ]
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "select table_name, rule, reason, change->'new'->>'shop_domain' "
            "from cdc_tracker.dead_letters"
        ).fetchall()
    assert rows == [
        (
            "public.merchants",
            "identify public.merchants",
            "user_id (email) is null or empty",
            "b",
        )
    ]


def test_insert_message_ids_come_from_rule_and_primary_key(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Insert-triggered ids are (namespace, rule, key); update ids differ per change."""
    settings = settings_for(db, receiver, example_rulebook, namespace="shop/test")
    with running_daemon(settings) as daemon:
        sql(db, _merchants(1))
        transaction(
            db,
            "update merchants set owner_name = 'A'",
            "update merchants set owner_name = 'B'",
        )
        daemon.caught_up()
    calls = [c.payload for c in receiver.calls]
    installed = next(c for c in calls if c.get("event") == "Merchant Installed")
    assert installed["messageId"] == ids.insert_id(
        "shop/test", "Merchant Installed", [1]
    )
    identify_ids = [c["messageId"] for c in calls if c["type"] == "identify"]
    assert identify_ids[0] == ids.insert_id(
        "shop/test", insert_name("identify public.merchants"), [1]
    )
    assert len(set(identify_ids)) == 3
    assert all(0 < len(i) < 100 for i in identify_ids)


def test_segment_destination_uses_its_limits_and_no_gzip(
    db: str, example_rulebook: Path
) -> None:
    """destination=segment ships uncompressed within Segment's limits."""
    with FakeRudderStack(write_keys=["seg-key"], segment=True) as segment:
        settings = replace(
            settings_for(db, segment, example_rulebook),
            destination="segment",
            write_key="",
            segment_write_key="seg-key",
        )
        with running_daemon(settings, backoff=Backoff(initial=0.01, cap=0.05)) as d:
            sql(db, _merchants(2))
            d.caught_up()
        assert len(segment.calls) == 4
        assert not any(r.gzip for r in segment.requests)


def test_the_slot_moves_while_a_long_window_is_still_being_read(
    db: str,
    receiver: FakeRudderStack,
    example_rulebook: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches delivered are confirmed as soon as they are settled, not at the
    window's end: a crash then makes the next start read and send less again."""
    settings = replace(
        settings_for(db, receiver, example_rulebook),
        batch_calls=10,
        poll_interval=60.0,
        window_changes=1_000_000,
    )
    create_slot(settings)
    for start in range(300):  # 300 transactions waiting: one long window
        sql(db, _merchants(1, start))
    confirmed: list[Lsn] = []
    steps: list[None] = []
    confirm, step = Stream.confirm, Window.step

    def recording_confirm(stream: Stream, lsn: Lsn) -> None:
        confirmed.append(lsn)
        confirm(stream, lsn)

    def counting_step(window: Window) -> None:
        steps.append(None)
        step(window)

    monkeypatch.setattr(Stream, "confirm", recording_confirm)
    monkeypatch.setattr(Window, "step", counting_step)
    with running_daemon(settings) as daemon:
        daemon.caught_up()
        windows = len(steps)
    assert len(receiver.calls) == 600
    positions = sorted(set(confirmed))
    # Each window confirms once at its end; settled batches confirm within it.
    assert len(positions) > windows + 10


def test_a_batch_whose_every_call_is_refused_is_logged_as_such(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """Not 'batch shipped' with no call in it: a warning that says so."""
    settings = settings_for(db, receiver, email_user_rulebook(tmp_path))
    with running_daemon(settings) as daemon, capture_logs() as logs:
        daemon.caught_up()
        receiver.fail_for(60, status=400)
        sql(db, "insert into merchants (shop_domain, email) values ('a', 'a@x')")
        daemon.caught_up()
        receiver.fail_for(0)
    [refused] = [e for e in logs if e["event"].startswith("batch refused")]
    assert refused["event"] == "batch refused: every call is a dead letter"
    assert refused["log_level"] == "warning"
    assert (refused["calls"], refused["dead_letters"]) == (0, 1)
