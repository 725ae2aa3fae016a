"""The replication slot, streamed over PostgreSQL's replication protocol.

``pg_logical_slot_peek_changes`` decodes a whole window before its first row comes
back, and never splits a transaction, so the server and cdc-tracker would take
turns: the server decodes while we wait, we map while it idles. Over the
replication protocol (the one ``pg_recvlogical`` speaks) the server sends each row
as it decodes it, and decodes the next ones while we map and ship these.

psycopg 3 has no replication API; this speaks the protocol's three messages
through ``psycopg.pq``:

- ``w`` (XLogData), from the server: one wal2json row;
- ``k`` (keepalive), from the server: a position it has sent every row below, and
  whether it wants our status now;
- ``r`` (standby status), ours: the position every change below has been handled
  up to. The slot moves only to that position: reading consumes nothing.
"""

from __future__ import annotations

import re
import select
import struct
import threading
import time
from datetime import UTC, datetime

import psycopg
import structlog
from psycopg import pq
from psycopg.conninfo import make_conninfo
from psycopg.errors import error_from_result

from cdc_tracker.errors import CdcTrackerError, DecodeError
from cdc_tracker.model import Lsn
from cdc_tracker.source.connection import (
    SESSION_SETTINGS,
    connect_timeout,
    refuse_unreadable,
    translate_errors,
)
from cdc_tracker.source.read_ahead import (
    ENDED,
    Keepalive,
    ReadAhead,
    UnexpectedMessage,
)
from cdc_tracker.source.wal2json import MESSAGE_PREFIX, PLUGIN_OPTIONS

log = structlog.get_logger(__name__)

# Our status goes out at least this often, and three times per the server's
# wal_sender_timeout (60 s by default), after which it drops a silent client.
STATUS_SECONDS = 10.0
# How long a stop waits for the server to take our last status.
CLOSE_SECONDS = 2.0
SLOT_WAIT = "30s"  # longest a temporary slot waits for running transactions
_WAIT_SECONDS = 0.2  # how often a wait looks at the stop
# How far ahead of the daemon's use rows are read (see ``read_ahead``).
READ_AHEAD_BYTES = 32 << 20

_STATUS = struct.Struct("!cQQQQB")  # "r", written, flushed, applied, time, reply
_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC).timestamp()


class Stream:
    """One replication connection streaming one slot's wal2json rows: those of
    ``tables``, and of every table in ``schemas`` (the home of a partitioned
    table, whose changes carry the names of its partitions, new ones included).

    ``confirm`` is off for a dry run: the slot is read, never moved. Rows are
    read on a thread of their own up to ``read_ahead`` bytes ahead of ``read``
    (``source.read_ahead``).
    """

    def __init__(
        self,
        dsn: str,
        slot: str,
        tables: list[str],
        schemas: list[str],
        *,
        confirm: bool = True,
        stop: threading.Event | None = None,
        read_ahead: int = READ_AHEAD_BYTES,
    ) -> None:
        self.dsn = dsn
        self.stop = stop  # set: a connection or command still waiting is cancelled
        self.slot = slot
        self.tables = tables
        self.schemas = schemas
        self.confirm_positions = confirm
        # The server has sent every row of every transaction committed below this.
        self.sent_upto = Lsn(0)
        self.confirmed = Lsn(0)
        self._pgconn: pq.abc.PGconn | None = None
        self._status_at = 0.0
        self._temporary = False
        self.read_ahead = read_ahead
        self._ahead: ReadAhead | None = None
        # Held for each use of the connection while the reader thread runs.
        self._lock = threading.Lock()
        # How often our status must go out; set from the server's settings.
        self.status_seconds = STATUS_SECONDS

    @property
    def is_open(self) -> bool:
        return self._pgconn is not None

    @property
    def buffered(self) -> int:
        """Bytes of rows read from the server ahead of ``read`` (see
        ``read_ahead``): at most ``read_ahead`` and one row."""
        return self._ahead.buffered if self._ahead is not None else 0

    def open(self, *, temporary: bool = False) -> None:
        """Connect and start streaming from the slot's confirmed position.

        A ``temporary`` slot is created first, on this connection (it lives as
        long as it: ``run --dry-run`` beside a running daemon).
        """
        self._temporary = temporary
        self.sent_upto = Lsn(0)  # a new connection tells anew
        pgconn = self._connect()
        try:
            with translate_errors(self.slot, self.dsn):
                self.status_seconds = self._status_interval(pgconn)
                name = _identifier(self.slot)
                if temporary:
                    # Creation waits for every transaction holding an xid.
                    self._command(pgconn, f"SET lock_timeout = '{SLOT_WAIT}'")
                    self._command(
                        pgconn,
                        f"CREATE_REPLICATION_SLOT {name} TEMPORARY LOGICAL wal2json",
                        pq.ExecStatus.TUPLES_OK,
                    )
                self._command(
                    pgconn,
                    f"START_REPLICATION SLOT {name} LOGICAL 0/0 ({self._options()})",
                    pq.ExecStatus.COPY_BOTH,
                )
        except BaseException:
            pgconn.finish()
            raise
        self._pgconn = pgconn
        self.send_status()  # what we confirmed before, if the server lost it
        self._ahead = ReadAhead(
            pgconn, self.read_ahead, self._lock, self.keep_alive, self.send_status
        )
        log.debug(
            "streaming slot",
            slot=self.slot,
            tables=len(self.tables),
            read_ahead_mb=round(self.read_ahead / (1 << 20), 1),
        )

    def reopen(self, tables: list[str], schemas: list[str]) -> None:
        """Stream other tables, from the slot's confirmed position (a temporary
        slot starts over: it went with the connection)."""
        self.close()
        self.tables, self.schemas = tables, schemas
        self.open(temporary=self._temporary)

    def read(self, timeout: float) -> bytes | None:
        """The next wal2json row, or None when none arrived within ``timeout`` (or
        a stop came first)."""
        ahead = self._ahead
        assert ahead is not None
        deadline = 0.0
        while True:
            item = ahead.take()
            if type(item) is bytes:
                return item
            if item is None:
                now = time.monotonic()
                if not deadline:
                    deadline = now + timeout
                if now >= deadline or (self.stop is not None and self.stop.is_set()):
                    return None
                # A long wait (a large poll_interval) still notices a stop soon.
                ahead.wait(min(deadline - now, _WAIT_SECONDS))
            elif type(item) is Keepalive:
                if item.end > self.sent_upto:
                    self.sent_upto = Lsn(item.end)
            elif type(item) is UnexpectedMessage:
                raise DecodeError(
                    f"unexpected replication message {item.kind!r} "
                    f"from slot '{self.slot}'"
                )
            elif item is ENDED:
                self._ended()
            else:
                assert isinstance(item, BaseException)
                with translate_errors(self.slot, self.dsn):
                    raise item

    def confirm(self, lsn: Lsn) -> None:
        """Tell the server every change below ``lsn`` is handled: the slot moves."""
        if lsn > self.confirmed:
            self.confirmed = lsn
            self.send_status()

    def keep_alive(self) -> None:
        """Send our status if none went out for ``status_seconds``, or the server
        drops the connection: the reader thread calls it between reads, whatever
        the main thread is doing."""
        if time.monotonic() - self._status_at >= self.status_seconds:
            self.send_status()

    def send_status(self) -> None:
        """Tell the server the confirmed position now (nothing while closed)."""
        if self._pgconn is not None:
            self._send_status(self._pgconn)

    def _send_status(self, pgconn: pq.abc.PGconn) -> None:
        position = self.confirmed if self.confirm_positions else 0
        sent_at = int((time.time() - _POSTGRES_EPOCH) * 1_000_000)
        message = _STATUS.pack(b"r", position, position, position, sent_at, 0)
        with translate_errors(self.slot, self.dsn), self._lock:
            if pgconn.put_copy_data(message) != 1 or pgconn.flush() != 0:
                raise psycopg.OperationalError(pgconn.get_error_message())
        self._status_at = time.monotonic()

    def close(self) -> None:
        """End the stream; the server has our last status once this returns
        (unless it does not answer within ``CLOSE_SECONDS``)."""
        pgconn, self._pgconn = self._pgconn, None
        if pgconn is None:
            return
        if self._ahead is not None:
            self._ahead.close()  # the connection is this thread's alone again
            self._ahead = None
        try:
            if pgconn.status == pq.ConnStatus.OK:
                self._send_status(pgconn)
                pgconn.put_copy_end()
                pgconn.flush()
                _drain(pgconn, time.monotonic() + CLOSE_SECONDS)
        except (psycopg.Error, CdcTrackerError, OSError):
            pass  # closing a broken connection: the slot keeps its position
        finally:
            pgconn.finish()

    def _connect(self) -> pq.abc.PGconn:
        """A replication connection with our session settings, not streaming yet.

        Connecting and every command wait in ``select``, never inside libpq: a
        signal is handled at once, and a stop cancels what is waiting.
        """
        refuse_unreadable(self.dsn)
        conninfo = make_conninfo(
            self.dsn, replication="database", application_name="cdc-tracker"
        )
        deadline = time.monotonic() + int(connect_timeout(self.dsn))
        with translate_errors(self.slot, self.dsn):
            pgconn = pq.PGconn.connect_start(conninfo.encode())
            try:
                self._wait_connected(pgconn, deadline)
                for statement in SESSION_SETTINGS:
                    self._command(pgconn, statement)
            except BaseException:
                pgconn.finish()
                raise
        return pgconn

    def _wait_connected(self, pgconn: pq.abc.PGconn, deadline: float) -> None:
        if pgconn.status == pq.ConnStatus.BAD:
            raise psycopg.OperationalError(pgconn.get_error_message())
        polling = pq.PollingStatus.WRITING
        while polling not in (pq.PollingStatus.OK, pq.PollingStatus.FAILED):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.stop is not None and self.stop.is_set()):
                raise psycopg.OperationalError(
                    "connection timeout expired"
                    if remaining <= 0
                    else "stopped while connecting"
                )
            reading = polling == pq.PollingStatus.READING
            select.select(
                [pgconn.socket] if reading else [],
                [] if reading else [pgconn.socket],
                [],
                min(remaining, _WAIT_SECONDS),
            )
            polling = pq.PollingStatus(pgconn.connect_poll())
        if pgconn.status != pq.ConnStatus.OK:
            raise psycopg.OperationalError(pgconn.get_error_message())

    def _command(
        self,
        pgconn: pq.abc.PGconn,
        command: str,
        expected: pq.ExecStatus = pq.ExecStatus.COMMAND_OK,
    ) -> pq.abc.PGresult:
        """Run one command; a stop meanwhile cancels it (it then fails)."""
        pgconn.send_query(command.encode())
        cancelled = False
        while pgconn.is_busy():
            ready, _, _ = select.select([pgconn.socket], [], [], _WAIT_SECONDS)
            if ready:
                pgconn.consume_input()
            elif self.stop is not None and self.stop.is_set() and not cancelled:
                pgconn.get_cancel().cancel()
                cancelled = True
        result = pgconn.get_result()
        if result is None or result.status != expected:
            if result is None:
                raise psycopg.OperationalError(pgconn.get_error_message())
            raise error_from_result(result, encoding="utf-8")
        if expected != pq.ExecStatus.COPY_BOTH:
            while pgconn.get_result() is not None:
                pass
        return result

    def _status_interval(self, pgconn: pq.abc.PGconn) -> float:
        result = self._command(
            pgconn,
            "SELECT setting FROM pg_settings WHERE name = 'wal_sender_timeout'",
            pq.ExecStatus.TUPLES_OK,
        )
        value = result.get_value(0, 0) if result.ntuples else None
        timeout_ms = int(value) if value else 0  # 0: the server never times out
        if timeout_ms <= 0:
            return STATUS_SECONDS
        return min(STATUS_SECONDS, timeout_ms / 3000)

    def _options(self) -> str:
        pairs = list(zip(PLUGIN_OPTIONS[::2], PLUGIN_OPTIONS[1::2], strict=True))
        pairs += [
            ("add-tables", add_tables(self.tables, self.schemas)),
            ("add-msg-prefixes", MESSAGE_PREFIX),
        ]
        return ", ".join(f"{_identifier(k)} {_literal(v)}" for k, v in pairs)

    def _ended(self) -> None:
        """The server ended the stream: say why, as the source error it is."""
        pgconn = self._pgconn
        assert pgconn is not None
        with translate_errors(self.slot, self.dsn):
            result = pgconn.get_result()
            if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
                raise error_from_result(result, encoding="utf-8")
            raise psycopg.OperationalError(
                pgconn.get_error_message() or "the server ended the replication stream"
            )


def probe(dsn: str) -> str:
    """Open a replication connection as the daemon does, and close it; raises what
    opening the stream would (``pg_hba.conf``, no REPLICATION, no WAL sender left).
    Returns the server's system identifier."""
    stream = Stream(dsn, "-", [], [])
    pgconn = stream._connect()
    try:
        with translate_errors(dsn=dsn):
            result = stream._command(pgconn, "IDENTIFY_SYSTEM", pq.ExecStatus.TUPLES_OK)
            return (result.get_value(0, 0) or b"").decode()
    finally:
        pgconn.finish()


def _drain(pgconn: pq.abc.PGconn, deadline: float) -> None:
    """Read until the server ends the copy (it has then read all we sent)."""
    while time.monotonic() < deadline:
        size, _ = pgconn.get_copy_data(1)
        if size < 0:
            while pgconn.get_result() is not None:
                pass
            return
        if size == 0:
            ready, _, _ = select.select(
                [pgconn.socket], [], [], max(0.0, deadline - time.monotonic())
            )
            if ready:
                pgconn.consume_input()


def add_tables(tables: list[str], schemas: list[str]) -> str:
    """wal2json's ``add-tables`` value: ``schema.table`` pairs and ``schema.*``
    wildcards, special characters (space, quote, comma, period, asterisk,
    backslash) escaped with a backslash."""
    names = [
        f"{_escape(schema)}.{_escape(table)}"
        for schema, _, table in (name.partition(".") for name in tables)
    ]
    return ",".join(names + [f"{_escape(schema)}.*" for schema in schemas])


def _escape(part: str) -> str:
    return _SPECIAL.sub(r"\\\g<0>", part)


_SPECIAL = re.compile(r"[ ',.*\\]")


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
