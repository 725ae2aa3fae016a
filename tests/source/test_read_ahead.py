"""Rows are read ahead of their use, up to a bound: nothing is lost or reordered
on the way, the bound holds, and what the server says after the rows comes after
them."""

from __future__ import annotations

import time

import orjson
import psycopg
import pytest

from cdc_tracker.errors import SourceError
from cdc_tracker.source.connection import connect
from cdc_tracker.source.read_ahead import ROW_OVERHEAD
from cdc_tracker.source.slot import Slot
from cdc_tracker.source.stream import Stream
from tests.harness import slot_position, sql, wait_until, walsender_pid

ROWS = 2_000
BODY = "x" * 200


def _slot_with_rows(db: str, slot: str, table: str) -> None:
    sql(db, f"create table {table} (id int primary key, body text)")
    with connect(db) as conn:
        Slot(conn, slot).ensure(create=True)
    sql(
        db,
        f"insert into {table} select g, '{BODY}' from generate_series(1, {ROWS}) g",
    )


def _ids(rows: list[bytes]) -> list[int]:
    """The id column of each insert row, in the order read."""
    changes = [orjson.loads(row) for row in rows]
    return [c["columns"][0]["value"] for c in changes if c["action"] == "I"]


def _read_into(stream: Stream, rows: list[bytes]) -> None:
    while (data := stream.read(1.0)) is not None:
        rows.append(bytes(data))


def test_reading_ahead_stops_at_its_bound_and_loses_nothing(db: str) -> None:
    _slot_with_rows(db, "ahead_bound", "ahead_bound")
    limit = 64 * 1024
    stream = Stream(db, "ahead_bound", ["public.ahead_bound"], [], read_ahead=limit)
    stream.open()
    try:
        # Untouched, the reader fills up to its bound and stops there.
        wait_until(lambda: stream.buffered >= limit, 10)
        row_size = len(BODY) * 2 + ROW_OVERHEAD  # far more than any row here
        time.sleep(0.5)
        assert limit <= stream.buffered < limit + row_size
        rows = []
        while (data := stream.read(1.0)) is not None:
            rows.append(bytes(data))
        assert stream.buffered == 0
    finally:
        stream.close()
    assert rows[0].startswith(b'{"action":"B"')
    assert rows[-1].startswith(b'{"action":"C"')
    assert _ids(rows) == list(range(1, ROWS + 1))


def test_the_server_ending_the_stream_comes_after_the_rows_read_before(
    db: str,
) -> None:
    _slot_with_rows(db, "ahead_end", "ahead_end")
    stream = Stream(db, "ahead_end", ["public.ahead_end"], [])
    stream.open()
    try:
        # Every row is read ahead (the bound is far off), then the server goes.
        wait_until(lambda: stream.buffered > ROWS * len(BODY), 10)
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(
                "select pg_terminate_backend(active_pid) from pg_replication_slots "
                "where slot_name = 'ahead_end'"
            )
        time.sleep(0.3)
        rows: list[bytes] = []
        with pytest.raises(SourceError):
            _read_into(stream, rows)
    finally:
        stream.close()
    assert _ids(rows) == list(range(1, ROWS + 1))


def test_closing_a_stream_whose_reader_waits_for_room_is_quick_and_confirms(
    db: str,
) -> None:
    _slot_with_rows(db, "ahead_close", "ahead_close")
    stream = Stream(db, "ahead_close", ["public.ahead_close"], [], read_ahead=4096)
    stream.open()
    rows = [stream.read(1.0) for _ in range(3)]  # begin and two inserts
    assert all(rows)
    wait_until(lambda: stream.buffered >= 4096, 10)
    # The whole transaction has been sent by now (it ends with a keepalive).
    while stream.sent_upto == 0:
        stream.read(0.1)
    stream.confirm(stream.sent_upto)
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 1.0
    assert slot_position(db, "ahead_close") == stream.sent_upto


@pytest.mark.parametrize("limit", [4096, 32 << 20], ids=["full", "roomy"])
def test_the_connection_lives_while_rows_wait_unread(db: str, limit: int) -> None:
    """Our status goes out from the reader whatever the main thread does: rows
    waiting unread for four times wal_sender_timeout (the reader full and
    waiting for room, or holding them all) do not get the stream dropped."""
    _slot_with_rows(db, f"ahead_alive_{limit}", f"ahead_alive_{limit}")
    stream = Stream(
        db + " options='-c wal_sender_timeout=1s'",
        f"ahead_alive_{limit}",
        [f"public.ahead_alive_{limit}"],
        [],
        read_ahead=limit,
    )
    stream.open()
    try:
        walsender = walsender_pid(db, f"ahead_alive_{limit}")
        time.sleep(4.0)
        rows: list[bytes] = []
        _read_into(stream, rows)
        assert walsender_pid(db, f"ahead_alive_{limit}") == walsender is not None
    finally:
        stream.close()
    assert _ids(rows) == list(range(1, ROWS + 1))
