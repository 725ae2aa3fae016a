"""A lost slot stops loudly with what to replay; schema changes mid-stream flow on."""

from __future__ import annotations

import io
import itertools
import threading
import time
from pathlib import Path

import psycopg
import pytest
from structlog.testing import capture_logs

from cdc_tracker.daemon import window
from cdc_tracker.daemon.checkpoint import CheckpointStore
from cdc_tracker.daemon.counters import Counters
from cdc_tracker.daemon.loop import Daemon
from cdc_tracker.daemon.shipping import PrintShipper
from cdc_tracker.errors import ConfigError, SlotLost
from cdc_tracker.model import Lsn
from cdc_tracker.ops.health import Probe
from cdc_tracker.ops.metrics import DaemonCollector
from cdc_tracker.replay.main import run_replay
from cdc_tracker.replay.runner import ReplayOptions
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.settings import Settings
from cdc_tracker.testing.postgres import ThrowawayPostgres
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import (
    Running,
    email_user_rulebook,
    running_daemon,
    settings_for,
    slot_exists,
    slot_position,
    sql,
    transaction,
    wait_until,
)

INSERT = (
    "insert into merchants (shop_domain, owner_name, plan_name) "
    "values ('a.myshopify.com', 'Ada', 'basic')"
)


def _start(settings: Settings) -> None:
    """Start a dry-shipping daemon in this thread: for starts that must fail."""
    Daemon(
        settings,
        load_rulebook(settings.rulebook),
        PrintShipper(io.StringIO()),
        threading.Event(),
    ).run()


def _drop_slot(dsn: str, slot: str) -> None:
    sql(dsn, f"select pg_drop_replication_slot('{slot}')")


def _lost_when_dropped(daemon: Running, dsn: str, slot: str) -> str:
    """Drop the slot ``daemon`` streams (its backend ended first, as an operator
    would) and return the message of the ``SlotLost`` it stops with."""
    _drop_slot_when_free(dsn, slot)
    daemon.thread.join(timeout=20)
    assert isinstance(daemon.error, SlotLost)
    message = str(daemon.error)
    daemon.error = None  # expected: the harness would raise it
    return message


def test_slot_dropped_while_running_stops_with_the_replay_hint(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """The daemon stops with SlotLost naming the last shipped commit time."""
    settings = settings_for(db, receiver, example_rulebook)
    with running_daemon(settings) as daemon:
        sql(db, INSERT)
        daemon.caught_up()
        message = _lost_when_dropped(daemon, db, settings.slot)
    assert f"replication slot '{settings.slot}' does not exist" in message
    assert "shipped up to commit" in message
    assert "cdc-tracker replay --since 20" in message
    assert "--recreate-slot" in message


def test_the_lost_slot_backfill_holds_a_row_whose_transaction_began_earlier(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    # T1 writes a merchant (updated_at: T1's start) and stays open while T2
    # commits and is shipped; T1 commits after. Were the slot lost now, T1's row
    # would be unshipped, stamped before the last shipped commit.
    settings = settings_for(db, receiver, example_rulebook)
    with running_daemon(settings) as daemon, psycopg.connect(db) as t1:
        t1.execute("insert into merchants (shop_domain) values ('late')")
        time.sleep(0.3)
        sql(db, "insert into merchants (shop_domain) values ('early')")
        daemon.caught_up()
        with psycopg.connect(db, autocommit=True) as conn:
            shipped = CheckpointStore(conn, settings.slot).load()
        t1.commit()
    assert shipped is not None
    since = shipped.recovery_hint().split("--since ")[1].split("'")[0]
    receiver.reset()

    out, err = io.StringIO(), io.StringIO()
    options = ReplayOptions(since=since, tables=("public.merchants",))
    assert run_replay(settings, options, threading.Event(), out=out, err=err) == 0

    with psycopg.connect(db) as conn:
        written = conn.execute("select id::text from merchants").fetchall()
    assert {call.user_id for call in receiver.calls} == {row[0] for row in written}


def _drop_slot_when_free(dsn: str, slot: str) -> None:
    for _ in range(200):
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    "select pg_terminate_backend(active_pid) "
                    "from pg_replication_slots where slot_name = %s",
                    (slot,),
                )
            _drop_slot(dsn, slot)
            return
        except psycopg.errors.ObjectInUse:
            threading.Event().wait(0.02)
    raise AssertionError("slot stayed in use")


def test_missing_slot_with_a_checkpoint_is_not_recreated_silently(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """At start-up a missing slot that was read before is an error, unless asked."""
    settings = settings_for(db, receiver, example_rulebook)
    with running_daemon(settings) as daemon:
        sql(db, INSERT)
        daemon.caught_up()
    _drop_slot(db, settings.slot)
    sql(db, "update merchants set plan_name = 'lost'")

    with pytest.raises(SlotLost, match="changes committed since then were not read"):
        _start(settings)

    with running_daemon(settings, recreate_slot=True) as daemon:
        sql(db, "update merchants set plan_name = 'after'")
        daemon.caught_up()
    plans = [
        c.payload["properties"]["to"]
        for c in receiver.calls
        if c.payload.get("event") == "Plan Changed"
    ]
    assert plans == ["after"]


def test_a_slot_dropped_before_any_call_was_shipped_is_lost_not_recreated(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """No call shipped yet (the only change is a dead letter): the slot the daemon
    made is still its own, and a drop of it stops the daemon."""
    settings = settings_for(db, receiver, email_user_rulebook(tmp_path))
    with running_daemon(settings) as daemon:
        sql(db, "insert into merchants (shop_domain) values ('no email')")
        daemon.caught_up()
        assert receiver.calls == []
        message = _lost_when_dropped(daemon, db, settings.slot)
    assert f"replication slot '{settings.slot}' does not exist" in message
    assert "cdc-tracker replay --since 20" in message
    assert not slot_exists(db, settings.slot)


def test_recreate_slot_holds_for_the_start_only(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """A daemon started with --recreate-slot that loses its slot later stops, as
    any other: the flag is for the loss it was started to get over."""
    settings = settings_for(db, receiver, example_rulebook)
    with running_daemon(settings, recreate_slot=True) as daemon:
        sql(db, INSERT)
        daemon.caught_up()
        _lost_when_dropped(daemon, db, settings.slot)
    assert not slot_exists(db, settings.slot)


def test_a_checkpoint_past_the_servers_wal_is_refused_not_trusted(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """A checkpoint carried over from another server (a restore) would make the
    daemon skip every change below it, and confirm the slot past its WAL."""
    settings = settings_for(db, receiver, example_rulebook)
    with running_daemon(settings) as daemon:
        daemon.caught_up()
    sql(
        db,
        "update cdc_tracker.checkpoints set commit_lsn = 'FF/0'"
        f" where slot = '{settings.slot}'",
    )
    sql(db, INSERT)

    with pytest.raises(
        ConfigError, match="past the end of this server's WAL"
    ) as raised:
        _start(settings)
    assert "DELETE FROM cdc_tracker.checkpoints" in str(raised.value.hint)
    assert slot_position(db, settings.slot) < Lsn.parse("FF/0")


def test_invalidated_slot_stops_with_a_clear_error(
    receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """WAL removed past max_slot_wal_keep_size: SlotLost, not a retry loop."""
    settings_extra = {"max_slot_wal_keep_size": "1MB", "max_wal_size": "32MB"}
    with ThrowawayPostgres(settings=settings_extra) as server:
        dsn = server.create_database("shop")
        schema = (Path(example_rulebook).parent / "schema.sql").read_text()
        sql(dsn, schema)
        settings = settings_for(dsn, receiver, example_rulebook)
        with running_daemon(settings) as daemon:
            sql(dsn, INSERT)
            daemon.caught_up()
        sql(dsn, "create table filler (x text)")
        for _ in range(6):
            sql(
                dsn,
                "insert into filler "
                "select md5(g::text) from generate_series(1, 20000) g",
                "select pg_switch_wal()",
                "checkpoint",
            )
        state = _slot_status(dsn, settings.slot)
        assert state == "lost"
        with pytest.raises(SlotLost) as raised:
            _start(settings)
        # What the hint says gets over it: --recreate-slot replaces the slot.
        with running_daemon(settings, recreate_slot=True) as daemon:
            sql(dsn, "update merchants set plan_name = 'after'")
            daemon.caught_up()
        assert _slot_status(dsn, settings.slot) == "reserved"
    assert "invalidated" in str(raised.value) or "no longer" in str(raised.value)
    assert "replay --since" in str(raised.value)
    assert "--recreate-slot" in str(raised.value)
    changed = [c.payload for c in receiver.calls if c.event == "Plan Changed"]
    assert [payload["properties"]["to"] for payload in changed] == ["after"]


def _slot_status(dsn: str, slot: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select wal_status from pg_replication_slots where slot_name = %s", (slot,)
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_renamed_column_makes_dead_letters_not_a_crash(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """A rule column renamed mid-stream: its changes are dead letters, others flow."""
    settings = settings_for(db, receiver, example_rulebook)
    with running_daemon(settings) as daemon:
        sql(db, INSERT)
        daemon.caught_up()
        sql(
            db,
            "alter table merchants rename column owner_name to full_name",
            "update merchants set plan_name = 'pro'",
            "insert into payouts (merchant_id, amount, currency, status) "
            "values (1, 5, 'EUR', 'paid')",
        )
        daemon.caught_up()
        assert daemon.thread.is_alive()
    events = [c.payload.get("event") or c.payload["type"] for c in receiver.calls]
    # The identify reads owner_name; Plan Changed and Payout Fetched do not.
    assert events == [
        "identify",
        "Merchant Installed",
        "Plan Changed",
        "Payout Fetched",
    ]
    with psycopg.connect(db) as conn:
        reasons = conn.execute(
            "select rule, reason from cdc_tracker.dead_letters"
        ).fetchall()
    assert reasons == [
        (
            "identify public.merchants",
            "column 'owner_name' is not in public.merchants any more "
            "(dropped or renamed?)",
        )
    ]


def test_added_column_and_changed_type_keep_flowing(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Adding a column is ignored; a type change is converted by the new type."""
    settings = settings_for(db, receiver, example_rulebook)
    with running_daemon(settings) as daemon:
        sql(db, INSERT)
        sql(
            db,
            "alter table merchants add column region text",
            "alter table merchants alter column current_monthly_total "
            "type numeric(20,4)",
            "update merchants set current_monthly_total = 12.5, region = 'EU'",
        )
        daemon.caught_up()
    identifies = [c.exact_payload() for c in receiver.calls if c.type == "identify"]
    assert len(identifies) == 2
    assert str(identifies[-1]["traits"]["currentMonthlyTotal"]) == "12.5000"
    assert "region" not in identifies[-1]["traits"]


def test_a_renamed_tracked_table_is_reported_and_fails_readiness(
    db: str,
    receiver: FakeRudderStack,
    example_rulebook: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its changes stop arriving under the old name: say so, do not look healthy."""
    monkeypatch.setattr("cdc_tracker.daemon.loop.TABLE_CHECK_SECONDS", 0.05)
    with (
        capture_logs() as logs,
        running_daemon(settings_for(db, receiver, example_rulebook)) as daemon,
    ):
        counters = daemon.daemon.counters
        assert daemon.client is not None
        probe = Probe(counters, daemon.client.stats, lambda: True, stall_seconds=60)
        sql(db, "alter table payouts rename to payouts_archive")
        wait_until(lambda: counters.missing_tables == ["public.payouts"], 10)
        assert probe.not_ready() == "tracked tables are gone: public.payouts"
        sql(db, "alter table payouts_archive rename to payouts")
        wait_until(lambda: counters.missing_tables == [], 10)
        assert probe.not_ready() is None
    said = [entry["event"] for entry in logs if entry.get("table") == "public.payouts"]
    assert said == [
        "tracked table is gone; its changes are not read",
        "tracked table is back",
    ]


def test_identity_without_old_key_while_running_is_reported_and_fails_readiness(
    db: str,
    receiver: FakeRudderStack,
    example_rulebook: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL drops the updates of a table that logs no old key before they
    reach the slot: the start-up check refuses that, and so does the running one,
    as loudly as a table gone."""
    monkeypatch.setattr("cdc_tracker.daemon.loop.TABLE_CHECK_SECONDS", 0.05)
    with running_daemon(settings_for(db, receiver, example_rulebook)) as daemon:
        counters = daemon.daemon.counters
        assert daemon.client is not None
        probe = Probe(counters, daemon.client.stats, lambda: True, stall_seconds=60)
        assert counters.schema_problems == []
        sql(db, "alter table merchants replica identity nothing")
        wait_until(lambda: bool(counters.schema_problems), 10)
        problems = counters.schema_problems
        # The table's update rules, and the rules that read old values.
        assert len(problems) == 5
        for problem in problems:
            assert problem.startswith(f"{example_rulebook}:")
            assert "REPLICA IDENTITY NOTHING" in problem
            assert problem.endswith(
                "fix: ALTER TABLE public.merchants REPLICA IDENTITY FULL;"
            )
        assert probe.not_ready() == (
            f"the rulebook does not fit the schema: {problems[0]} (and 4 more)"
        )
        assert _gauge(counters, "cdc_tracker_schema_problems") == 5
        sql(db, "alter table merchants replica identity full")
        wait_until(lambda: counters.schema_problems == [], 10)
        assert probe.not_ready() is None
        assert _gauge(counters, "cdc_tracker_schema_problems") == 0


def test_a_reconnect_with_a_schema_problem_open_goes_on_reading(
    db: str,
    receiver: FakeRudderStack,
    example_rulebook: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server restart or failover while one table is wrong must not stop the
    others: the start-up check refuses only at start-up."""
    monkeypatch.setattr("cdc_tracker.daemon.loop.TABLE_CHECK_SECONDS", 0.05)
    with running_daemon(settings_for(db, receiver, example_rulebook)) as daemon:
        counters = daemon.daemon.counters
        sql(db, "alter table merchants replica identity nothing")
        wait_until(lambda: bool(counters.schema_problems), 10)
        sql(
            db,
            "select pg_terminate_backend(active_pid) from pg_replication_slots "
            "where active_pid is not null",
        )
        sql(
            db,
            INSERT,
            "insert into payouts (merchant_id, amount, currency, status) "
            "select id, 10.00, 'EUR', 'paid' from merchants",
        )
        wait_until(lambda: any(c.event == "Payout Fetched" for c in receiver.calls), 20)
        assert len(counters.schema_problems) == 5
        sql(db, "alter table merchants replica identity full")
        wait_until(lambda: counters.schema_problems == [], 10)


def test_replica_identity_dropped_while_running_names_the_fix(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Rules needing old values dead-letter with the ALTER TABLE that fixes it."""
    with running_daemon(settings_for(db, receiver, example_rulebook)) as daemon:
        sql(db, INSERT)
        daemon.caught_up()
        sql(
            db,
            "alter table merchants replica identity default",
            "update merchants set plan_name = 'gold'",
        )
        daemon.caught_up()
    with psycopg.connect(db) as conn:
        reasons = dict(
            conn.execute("select rule, reason from cdc_tracker.dead_letters").fetchall()
        )
    assert sorted(reasons) == ["Plan Changed", "Xero Connection Lost"]
    assert reasons["Plan Changed"] == (
        "column 'plan_name' is not in the old row image, which holds only the key: "
        "public.merchants does not have REPLICA IDENTITY FULL (any more?); fix: "
        "ALTER TABLE public.merchants REPLICA IDENTITY FULL;"
    )
    assert [c.type for c in receiver.calls].count("identify") == 2


PARTITIONED_RULEBOOK = """\
version: 1
tables:
  public.events:
    user_id: account
identify:
  - table: public.events
    on: [insert, update]
    traits:
      kind: kind
"""


def _partitioned_events(db: str) -> None:
    sql(
        db,
        "create table events (id bigint, at date, account text, kind text, "
        "primary key (id, at)) partition by range (at)",
        "create table events_2025 partition of events "
        "for values from ('2025-01-01') to ('2026-01-01')",
        "create schema archive",
        "create table other (id int primary key)",
    )


def _events_2025_2026(db: str, tmp_path: Path) -> Path:
    """``events`` with partitions for 2025 and 2026, and its rulebook."""
    _partitioned_events(db)
    sql(
        db,
        "create table events_2026 partition of events "
        "for values from ('2026-01-01') to ('2027-01-01')",
    )
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(PARTITIONED_RULEBOOK)
    return rulebook


def test_a_partitioned_table_is_read_through_its_partitions_new_ones_too(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """wal2json names the leaves; calls come from the parent's rules, and a
    partition created while the daemon runs is read from its first row on."""
    rulebook = _events_2025_2026(db, tmp_path)
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        sql(
            db,
            "insert into events values (1, '2025-05-01', 'a', 'old'), "
            "(2, '2026-05-01', 'b', 'new')",
            "create table events_2027 partition of events "
            "for values from ('2027-01-01') to ('2028-01-01')",
            "insert into events values (3, '2027-05-01', 'c', 'future')",
            "update events set kind = 'changed' where id = 1",
        )
        daemon.caught_up()
    traits = [(c.user_id, c.payload["traits"]["kind"]) for c in receiver.calls]
    assert traits == [("a", "old"), ("b", "new"), ("c", "future"), ("a", "changed")]


def test_a_partition_created_in_another_schema_is_read_from_its_first_row(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """Only the schemas of known partitions are streamed whole: the window that
    held a new partition's first rows, elsewhere, is read again with it."""
    _partitioned_events(db)
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(PARTITIONED_RULEBOOK)
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        sql(db, "insert into events values (1, '2025-05-01', 'a', 'before')")
        receiver.wait_for_calls(1)
        transaction(
            db,
            "insert into events values (2, '2025-07-01', null, 'nobody')",
            "create table archive.events_2027 partition of events "
            "for values from ('2027-01-01') to ('2028-01-01')",
            "insert into events values (3, '2027-05-01', 'c', 'future')",
        )
        sql(db, "insert into events values (4, '2025-06-01', 'd', 'after')")
        daemon.caught_up()
        sql(db, "insert into events values (5, '2027-06-01', 'e', 'later')")
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 1
    kinds = {c.payload["traits"]["kind"] for c in receiver.calls}
    assert kinds == {"before", "future", "after", "later"}
    # The window was read twice; its dead letter (a null userId) is stored once.
    with psycopg.connect(db) as conn:
        stored = conn.execute("select reason from cdc_tracker.dead_letters").fetchall()
    assert [reason for (reason,) in stored] == ["user_id (account) is null or empty"]


def test_a_table_attached_as_a_partition_after_its_rows_were_skipped_is_read(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """A table of a streamed schema is skipped while it is not a partition. When it
    becomes one within the same window (kept open here by a busy writer and a 3 s
    interval), the window is read again, so the rows written since count."""
    _partitioned_events(db)
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(PARTITIONED_RULEBOOK)
    settings = settings_for(db, receiver, rulebook, poll_interval=3.0)
    stop = threading.Event()

    def busy() -> None:
        with psycopg.connect(db, autocommit=True) as conn:
            for n in itertools.count(100):
                if stop.wait(0.005):
                    return
                conn.execute(
                    "insert into events values (%s, '2025-05-01', 'w', 'w')", (n,)
                )

    with running_daemon(settings) as daemon:
        writer = threading.Thread(target=busy)
        writer.start()
        try:
            time.sleep(0.5)
            sql(
                db,
                "create table events_2027 (like events including all)",
                "insert into events_2027 values (2, '2027-02-01', 'b', 'own')",
            )
            time.sleep(0.3)
            transaction(
                db,
                "alter table events attach partition events_2027 "
                "for values from ('2027-01-01') to ('2028-01-01')",
                "insert into events values (3, '2027-05-01', 'c', 'attached')",
            )
            time.sleep(0.3)
        finally:
            stop.set()
            writer.join()
        daemon.caught_up(30)
    kinds = {c.payload["traits"]["kind"] for c in receiver.calls}
    assert "attached" in kinds


def test_rows_of_a_partition_detached_before_they_are_read_still_count(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """A partition archived (detached) while the daemon lags behind an outage:
    the row it took while attached is still its table's change."""
    rulebook = _events_2025_2026(db, tmp_path)
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        receiver.fail_for(3.0)
        sql(db, "insert into events values (1, '2025-05-01', 'a', 'before')")
        time.sleep(0.5)
        sql(
            db,
            "insert into events values (2, '2026-05-01', 'b', 'in-2026')",
            "alter table events detach partition events_2026",
            "insert into events values (3, '2025-06-01', 'c', 'after')",
        )
        daemon.caught_up(30)
        time.sleep(0.3)  # a few idle windows: each looks at the partitions again
        # Once handled past the detach, the archived table is no longer read.
        sql(db, "insert into events_2026 values (4, '2026-06-01', 'd', 'archived')")
        sql(db, "insert into events values (5, '2025-07-01', 'e', 'last')")
        daemon.caught_up(30)
    kinds = [c.payload["traits"]["kind"] for c in receiver.calls]
    assert kinds == ["before", "in-2026", "after", "last"]


def _lagging_behind_a_2026_row(db: str, receiver: FakeRudderStack) -> None:
    """An outage, and more batches than may wait for it: the reader stops short
    of a row the 2026 partition takes meanwhile."""
    receiver.fail_for(2.0)
    for n in range(10, 18):
        sql(db, f"insert into events values ({n}, '2025-05-01', 'q', 'q{n}')")
    sql(db, "insert into events values (2, '2026-05-01', 'b', 'in-2026')")
    time.sleep(0.3)


@pytest.mark.parametrize("change", ["detach, then reconnect", "rename", "drop"])
def test_rows_a_partition_took_before_it_left_its_table_still_count(
    db: str, receiver: FakeRudderStack, tmp_path: Path, change: str
) -> None:
    """The partition leaves the tracked table (detached, or the table renamed or
    dropped) while its row is still ahead in the stream, even across a lost
    connection: the row was the table's when it was written, so it is sent."""
    rulebook = _events_2025_2026(db, tmp_path)
    settings = settings_for(db, receiver, rulebook, batch_calls=1)
    with running_daemon(settings) as daemon:
        sql(db, "insert into events values (1, '2025-05-01', 'a', 'before')")
        daemon.caught_up()
        _lagging_behind_a_2026_row(db, receiver)
        if change == "rename":
            sql(db, "alter table events rename to events_old")
        elif change == "drop":
            sql(db, "drop table events")
        else:
            sql(db, "alter table events detach partition events_2026")
            time.sleep(0.2)
            sql(
                db,
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where datname = current_database() and pid <> pg_backend_pid() "
                "and application_name = 'cdc-tracker'",
            )
        daemon.caught_up(30)
    kinds = [c.payload["traits"]["kind"] for c in receiver.calls]
    assert "in-2026" in kinds


def test_rows_written_to_a_detached_partition_once_noticed_are_not_its_tables(
    db: str, receiver: FakeRudderStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During an outage the daemon keeps looking at the partitions: rows written
    to a partition after its detach was noticed belong to no tracked table."""
    monkeypatch.setattr(window, "RELEASE_SECONDS", 0.5)  # looks every 0.5 s
    rulebook = _events_2025_2026(db, tmp_path)
    settings = settings_for(db, receiver, rulebook, batch_calls=1)
    with running_daemon(settings) as daemon:
        sql(db, "insert into events values (1, '2025-05-01', 'a', 'before')")
        daemon.caught_up()
        receiver.fail_for(4.0)
        for n in range(10, 18):
            sql(db, f"insert into events values ({n}, '2025-05-01', 'q', 'q{n}')")
        sql(db, "alter table events detach partition events_2026")
        time.sleep(1.5)
        for n in range(20, 25):
            sql(db, f"insert into events_2026 values ({n}, '2026-05-01', 's', 'alone')")
        daemon.caught_up(30)
    kinds = [c.payload["traits"]["kind"] for c in receiver.calls]
    assert "q17" in kinds
    assert "alone" not in kinds


def _gauge(counters: Counters, name: str) -> float:
    for metric in DaemonCollector(counters, None).collect():
        if metric.name == name:
            return float(metric.samples[0].value)
    raise AssertionError(f"no metric {name}")


def test_a_truncate_is_counted_and_warns_about_keys_that_start_over(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """No rows come with a TRUNCATE, so no calls; a table named by its keys is
    told what a RESTART IDENTITY would do to the insert ids of its new rows."""
    with (
        capture_logs() as logs,
        running_daemon(settings_for(db, receiver, example_rulebook)) as daemon,
    ):
        sql(db, INSERT)
        daemon.caught_up()
        calls = len(receiver.calls)
        sql(db, "truncate payouts, merchants restart identity")
        daemon.caught_up()
        assert daemon.daemon.counters.truncates == 2
    assert len(receiver.calls) == calls
    warnings = [
        e for e in logs if e["event"] == "table truncated; no calls made for it"
    ]
    assert sorted(e["table"] for e in warnings) == [
        "public.merchants",
        "public.payouts",
    ]
    assert all("insert_ids: position" in e["hint"] for e in warnings)


def test_only_truncates_of_tracked_tables_count_where_a_schema_is_streamed_whole(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """A tracked partitioned table streams its schema whole: a TRUNCATE of another
    table there is none of ours, one of a partition is."""
    rulebook = _events_2025_2026(db, tmp_path)
    with (
        capture_logs() as logs,
        running_daemon(settings_for(db, receiver, rulebook)) as daemon,
    ):
        sql(db, "truncate other")
        daemon.caught_up()
        assert daemon.daemon.counters.truncates == 0
        sql(db, "truncate events_2025")
        daemon.caught_up()
        assert daemon.daemon.counters.truncates == 1
    warnings = [
        e for e in logs if e["event"] == "table truncated; no calls made for it"
    ]
    assert [e["table"] for e in warnings] == ["public.events_2025"]


def test_the_large_values_warning_names_a_statement_that_runs(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """A table whose name needs quotes gets them in the fix it is told."""
    sql(db, 'create table "Weird Name" (id int primary key, body text)')
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(
        'version: 1\ntables:\n  public."Weird Name":\n    user_id: id\n'
        "identify:\n  - table: '\"Weird Name\"'\n    on: [insert, update]\n"
        "    traits:\n      body: body\n"
    )
    with capture_logs() as logs, running_daemon(settings_for(db, receiver, rulebook)):
        pass
    [warning] = [
        e for e in logs if e["event"] == "large values may be left out of update calls"
    ]
    assert warning["table"] == "public.Weird Name"
    assert warning["hint"] == (
        'keep them with ALTER TABLE public."Weird Name" REPLICA IDENTITY FULL;'
    )
