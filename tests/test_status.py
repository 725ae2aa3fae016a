"""cdc-tracker status: slot figures against a known lag, shipping counters, dead
letters, the active replica, and the command's output."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest

from cdc_tracker.cli import main
from cdc_tracker.daemon.checkpoint import Checkpoint, CheckpointStore
from cdc_tracker.deadletters.store import DeadLetterStore
from cdc_tracker.errors import ConfigError
from cdc_tracker.model import DeadLetter, Lsn
from cdc_tracker.ops.status import Status, read_status, render_table, to_document
from cdc_tracker.settings import Settings
from cdc_tracker.source.slot import connect
from cdc_tracker.source.stream import Stream
from cdc_tracker.testing.postgres import PostgresServer
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import (
    create_slot,
    running_daemon,
    settings_for,
    slot_in_another_database,
    sql,
)


@pytest.fixture
def settings(db: str, receiver: FakeRudderStack, example_rulebook: Path) -> Settings:
    return settings_for(db, receiver, example_rulebook)


def status_of(settings: Settings) -> Status:
    with connect(settings.dsn) as conn:
        return read_status(conn, settings.slot)


def wal_figures(settings: Settings) -> tuple[int, int]:
    """(retained, pending) bytes as pg_wal_lsn_diff gives them, independently."""
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (settings.slot,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def write_wal(dsn: str, rows: int) -> None:
    sql(
        dsn,
        "INSERT INTO merchants (shop_domain, plan_name) "
        f"SELECT 'shop-' || n || '.example', 'basic' FROM generate_series(1, {rows}) n",
    )


def away_from_a_minute_boundary() -> None:
    """Wait past the next minute if this one ends within 3 s (minute counters)."""
    second = datetime.now(UTC).second
    if second >= 57:
        time.sleep(61 - second)


def test_lag_figures_agree_with_pg_wal_lsn_diff_around_them(
    settings: Settings,
) -> None:
    create_slot(settings)
    write_wal(settings.dsn, 2_000)

    retained_before, pending_before = wal_figures(settings)
    status = status_of(settings)
    retained_after, pending_after = wal_figures(settings)

    position = status.position
    assert position is not None
    assert pending_before <= position.pending_bytes <= pending_after
    assert retained_before <= (position.retained_bytes or 0) <= retained_after
    # 2,000 rows of WAL, all written after the slot's confirmed position.
    assert position.pending_bytes > 100_000
    assert position.current - position.confirmed == position.pending_bytes
    assert status.healthy


def test_the_confirmed_position_is_the_slots(settings: Settings) -> None:
    create_slot(settings)
    write_wal(settings.dsn, 10)
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_replication_slot_advance(%s, pg_current_wal_flush_lsn())",
            (settings.slot,),
        )
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (settings.slot,),
        ).fetchone()
    assert row is not None

    position = status_of(settings).position

    assert position is not None
    assert position.confirmed == Lsn.parse(row[0])


def test_a_missing_slot_is_reported_and_unhealthy(settings: Settings) -> None:
    status = status_of(settings)

    assert status.position is None
    assert not status.healthy
    assert "does not exist" in render_table(status)
    assert to_document(status)["exists"] is False


def test_a_slot_lost_after_it_was_read_says_how_to_recover(
    settings: Settings,
) -> None:
    with running_daemon(settings) as daemon:
        daemon.caught_up()
    sql(settings.dsn, f"select pg_drop_replication_slot('{settings.slot}')")

    text = render_table(status_of(settings))

    assert "the slot does not exist, yet it was read up to commit" in text
    assert "it was lost; recreate the slot with 'cdc-tracker run --recreate-slot'" in (
        text
    )
    assert "'cdc-tracker run' creates it" not in text


def test_a_daemon_that_shipped_nothing_yet_says_since_when_it_reads(
    settings: Settings,
) -> None:
    with running_daemon(settings) as daemon:
        daemon.caught_up()

    text = render_table(status_of(settings))

    assert "none shipped yet; reading since 20" in text


def test_a_physical_slot_of_the_name_is_named_not_a_traceback(
    settings: Settings,
) -> None:
    sql(settings.dsn, f"select pg_create_physical_replication_slot('{settings.slot}')")
    try:
        with pytest.raises(ConfigError, match="is a physical slot"):
            status_of(settings)
    finally:
        sql(settings.dsn, f"select pg_drop_replication_slot('{settings.slot}')")


def test_a_slot_of_another_database_is_not_shown_as_this_ones(
    settings: Settings, pg: PostgresServer
) -> None:
    with (
        slot_in_another_database(pg.dsn(), settings.slot),
        pytest.raises(ConfigError) as caught,
    ):
        status_of(settings)

    with psycopg.connect(settings.dsn) as conn:
        here = conn.info.dbname
    assert f"belongs to database 'postgres', not '{here}'" in str(caught.value)
    assert "--dsn" in (caught.value.hint or "")


def test_a_slot_streamed_by_another_reader_is_told(settings: Settings) -> None:
    """Not 'no cdc-tracker holds the slot' as if all were idle: someone else
    reads it, and no daemon can while they do."""
    create_slot(settings)
    other = Stream(settings.dsn, settings.slot, ["public.merchants"], [])
    other.open()
    try:
        status = status_of(settings)
    finally:
        other.close()

    assert status.replica is None
    assert status.position is not None
    assert status.position.reader_pid
    assert "streamed by another process (server pid" in render_table(status)
    assert to_document(status)["position"]["reader_pid"] == status.position.reader_pid


def test_unshipped_age_is_bounded_by_the_last_shipped_commit(
    settings: Settings,
) -> None:
    create_slot(settings)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with connect(settings.dsn) as conn:
        store = CheckpointStore(conn, settings.slot)
        store.ensure_schema()
        store.save(Checkpoint(Lsn.parse("0/1"), hour_ago), calls=3, batches=1)
    write_wal(settings.dsn, 10)

    unshipped = status_of(settings).unshipped_for

    assert unshipped is not None
    assert timedelta(minutes=59) < unshipped < timedelta(minutes=61)


def test_being_caught_up_shrinks_the_unshipped_age(settings: Settings) -> None:
    create_slot(settings)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with connect(settings.dsn) as conn:
        store = CheckpointStore(conn, settings.slot, caught_up_every=60)
        store.ensure_schema()
        store.save(Checkpoint(Lsn.parse("0/1"), hour_ago))
        wrote = store.mark_caught_up()
        wrote_again = store.mark_caught_up()
    write_wal(settings.dsn, 10)

    unshipped = status_of(settings).unshipped_for

    assert (wrote, wrote_again) == (True, False)
    assert unshipped is not None
    assert unshipped < timedelta(seconds=30)


def test_nothing_shipped_yet_leaves_the_age_unknown(settings: Settings) -> None:
    create_slot(settings)
    write_wal(settings.dsn, 10)

    status = status_of(settings)

    assert status.shipping is None
    assert status.unshipped_for is None
    assert "none shipped yet" in render_table(status)


def test_calls_are_totalled_and_counted_for_the_last_whole_minute(
    settings: Settings,
) -> None:
    away_from_a_minute_boundary()
    commit = Checkpoint(Lsn.parse("0/10"), datetime.now(UTC))
    with connect(settings.dsn) as conn:
        store = CheckpointStore(conn, settings.slot)
        store.ensure_schema()
        store.save(commit, calls=5, batches=1)
        store.save(commit, calls=4, batches=1)
        during = read_status(conn, settings.slot).shipping
        # As if the 9 calls had been shipped in the minute before this one.
        conn.execute(
            "UPDATE cdc_tracker.checkpoints "
            "SET minute_at = date_trunc('minute', now()) - interval '1 minute'"
        )
        after = read_status(conn, settings.slot).shipping
        store.save(commit, calls=2, batches=1)
        rotated = read_status(conn, settings.slot).shipping

    assert during is not None
    assert after is not None
    assert rotated is not None
    assert (during.calls_total, during.batches_total) == (9, 2)
    assert during.calls_last_minute == 0  # this minute is not over yet
    assert after.calls_last_minute == 9
    assert rotated.calls_last_minute == 9
    assert (rotated.calls_total, rotated.batches_total) == (11, 3)


def test_a_checkpoint_table_of_an_older_version_is_upgraded_in_place(
    settings: Settings,
) -> None:
    sql(
        settings.dsn,
        "CREATE SCHEMA cdc_tracker",
        "CREATE TABLE cdc_tracker.checkpoints (slot text PRIMARY KEY, "
        "commit_lsn pg_lsn NOT NULL, commit_time timestamptz NOT NULL, "
        "updated_at timestamptz NOT NULL DEFAULT now())",
        f"INSERT INTO cdc_tracker.checkpoints VALUES ('{settings.slot}', '0/5', now())",
    )
    old = status_of(settings).shipping

    with connect(settings.dsn) as conn:
        store = CheckpointStore(conn, settings.slot)
        store.ensure_schema()
        store.save(Checkpoint(Lsn.parse("0/6"), datetime.now(UTC)), calls=1)
    new = status_of(settings).shipping

    assert old is not None
    assert old.calls_total is None
    assert new is not None
    assert new.calls_total == 1
    assert new.commit_lsn == Lsn.parse("0/6")


def test_dead_letters_waiting_are_counted_by_reason(settings: Settings) -> None:
    letters = [
        DeadLetter("public.payouts", "r", reason, Lsn(16), n)
        for n, reason in enumerate(["null userId", "null userId", "refused"])
    ]
    with connect(settings.dsn) as conn:
        store = DeadLetterStore(conn, settings.slot)
        store.ensure_schema()
        store.save(letters)
        DeadLetterStore(conn, "another_slot").save(letters[:1])

    status = status_of(settings)

    assert status.dead_letters == {"null userId": 2, "refused": 1}
    assert "3 waiting: 2 null userId, 1 refused" in render_table(status)


def test_a_daemon_holding_the_lock_shows_as_the_active_replica(
    settings: Settings,
) -> None:
    with running_daemon(settings) as running:
        assert running.daemon.slot is not None
        daemon_pid = running.daemon.slot.conn.info.backend_pid
        while_running = status_of(settings)
    after = status_of(settings)

    replica = while_running.replica
    assert replica is not None
    assert replica.pid == daemon_pid
    assert replica.application_name == "cdc-tracker"
    assert replica.client_addr == "127.0.0.1"
    assert f"pid {daemon_pid} (cdc-tracker) from 127.0.0.1" in render_table(
        while_running
    )
    assert after.replica is None


def test_the_command_prints_json_when_not_on_a_terminal(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["status", "--dsn", settings.dsn, "--slot", settings.slot]

    missing = main(args)
    missing_doc = orjson.loads(capsys.readouterr().out)
    create_slot(settings)
    present = main(args)
    document = orjson.loads(capsys.readouterr().out)

    assert (missing, missing_doc["exists"]) == (1, False)
    assert present == 0
    assert document["slot"] == settings.slot
    assert document["lag"]["pending_bytes"] >= 0
    assert document["dead_letters"] == {"waiting": 0, "by_reason": {}}
