"""Error translation at the psycopg boundary, on a real server."""

from __future__ import annotations

import socket
import time

import psycopg
import pytest

from cdc_tracker.errors import ConfigError, SourceUnavailable
from cdc_tracker.source import connection
from cdc_tracker.source.connection import connect, translate_errors
from cdc_tracker.source.slot import Slot
from cdc_tracker.source.stream import Stream
from cdc_tracker.testing.postgres import ThrowawayPostgres


def test_a_lock_wait_past_its_timeout_names_open_transactions(db: str) -> None:
    """Creating a slot waits for every transaction holding an xid, under a lock
    timeout: running out of it is retried, and the message says what to look for."""
    with psycopg.connect(db) as holder, connect(db) as conn:
        holder.execute("insert into merchants (shop_domain) values ('open.example')")
        conn.execute("SET lock_timeout = '100ms'")
        with (
            pytest.raises(SourceUnavailable, match="waited too long") as raised,
            translate_errors("s1", db),
            conn.transaction(),
        ):
            conn.execute("lock table merchants")
        holder.rollback()
    assert "idle in transaction" in str(raised.value)


def test_a_server_without_wal_senders_is_a_configuration_error() -> None:
    """With max_wal_senders = 0 nothing can stream: retrying cannot fix it."""
    with ThrowawayPostgres(settings={"max_wal_senders": "0"}) as server:
        dsn = server.create_database("no_senders")
        with connect(dsn) as conn:
            Slot(conn, "no_senders").ensure(create=True)
        with pytest.raises(ConfigError, match="max_wal_senders"):
            Stream(dsn, "no_senders", [], []).open()


def test_a_server_that_does_not_answer_is_retried_with_a_hint() -> None:
    """Nothing listens on the port: a failure to wait out (the daemon retries
    it), told with what to look at."""
    dsn = "host=127.0.0.1 port=1 user=cdc dbname=app connect_timeout=5"
    with (
        pytest.raises(SourceUnavailable, match="connection failed") as raised,
        translate_errors(None, dsn),
    ):
        psycopg.connect(dsn)
    assert raised.value.hint == (
        "is the database up, and at the DSN's host and port (--dsn or CDC_TRACKER_DSN)?"
    )


def test_a_server_that_takes_the_connection_and_never_answers_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener that accepts and stays silent: without a connect_timeout in
    the DSN, opening gives up after CONNECT_SECONDS (not psycopg's 130 s), and
    says so with the hint; a DSN's own connect_timeout is kept."""
    monkeypatch.setattr(connection, "CONNECT_SECONDS", 1)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        dsn = f"host=127.0.0.1 port={port} user=cdc dbname=app"
        started = time.monotonic()
        with pytest.raises(SourceUnavailable, match="timeout") as raised:
            connect(dsn)
        waited = time.monotonic() - started
        assert connection.connect_timeout(f"{dsn} connect_timeout=7") == "7"
    assert 0.9 < waited < 5
    assert raised.value.hint is not None
    assert "host and port" in raised.value.hint
