"""The replication stream read on a thread of its own, up to a bound ahead of use.

The server decodes a transaction whole before it sends its first row: for a
large one, seconds in which a reader that takes rows only as it needs them has
nothing to do, though it may be far behind. ``ReadAhead`` keeps reading into
memory while the daemon maps and ships, up to ``limit`` bytes (rows and their
bookkeeping), so that the server's silences are spent on the rows it sent
before them; past the bound it stops reading, and the server waits, as it does
for any slow client.

One thread reads; the daemon's main thread takes. Both use the same libpq
connection (the main thread sends our status on it when it confirms), each
call under ``lock``: psycopg's pure-Python build lets go of Python's lock inside
libpq. The reader also keeps the connection alive whatever the main thread is
doing: it calls ``keep_alive`` between reads (our status is due every few
seconds, or the server drops us) and ``reply`` as soon as it reads a keepalive
asking for our status, which would otherwise wait behind every row read before
it. What the reader meets is kept in the order met, after the rows before it:
a row (``bytes``, the wal2json text without its header), a ``Keepalive``, an
``UnexpectedMessage``, ``ENDED`` (the server ended the stream), or the
exception that reading raised; reading stops after any of the last three.
"""

from __future__ import annotations

import os
import select
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from psycopg import pq

# A row is kept as a bytes object in a deque: this much memory on top of its text.
ROW_OVERHEAD = 64
_WAIT_SECONDS = 0.2  # the longest the reader sleeps without looking at a close
_ROW_HEADER = 25  # "w", start, end of WAL, send time
_KEEPALIVE = struct.Struct("!QQB")  # end of WAL, send time, reply requested
_W, _K = ord("w"), ord("k")


class Keepalive(NamedTuple):
    """The server has sent every row below ``end`` (answered on the reader)."""

    end: int


class UnexpectedMessage(NamedTuple):
    """A message of a kind the replication protocol does not send here."""

    kind: str


class _Ended:
    def __repr__(self) -> str:
        return "ENDED"


ENDED = _Ended()

Item = bytes | Keepalive | UnexpectedMessage | _Ended | BaseException


class ReadAhead:
    """Reads ``pgconn``'s replication messages on a thread until ``close``;
    ``keep_alive`` and ``reply`` are called on that thread, without ``lock``."""

    def __init__(
        self,
        pgconn: pq.abc.PGconn,
        limit: int,
        lock: threading.Lock,
        keep_alive: Callable[[], None],
        reply: Callable[[], None],
    ) -> None:
        self.pgconn = pgconn
        self.limit = limit
        self.lock = lock
        self._keep_alive = keep_alive
        self._reply = reply
        self._items: deque[Item] = deque()
        # Bytes read and bytes taken, each counted by one thread only.
        self._read = 0
        self._taken = 0
        self._full = False  # the reader waits for room
        self._arrived = threading.Condition(threading.Lock())
        self._room = threading.Event()
        self._closed = False
        self._wake_out, self._wake_in = os.pipe()
        self._thread = threading.Thread(
            target=self._run, name="cdc-tracker-read", daemon=True
        )
        self._thread.start()

    @property
    def buffered(self) -> int:
        """Bytes read and not taken yet (rows and their bookkeeping)."""
        return self._read - self._taken

    def take(self) -> Item | None:
        """The next item, or None if none is read yet."""
        try:
            item = self._items.popleft()
        except IndexError:
            return None
        if type(item) is bytes:
            self._taken += len(item) + ROW_OVERHEAD
            if self._full and self._read - self._taken <= self.limit // 2:
                self._full = False
                self._room.set()
        return item

    def wait(self, timeout: float) -> None:
        """Return once an item is there to take, or after ``timeout``."""
        with self._arrived:
            if not self._items:
                self._arrived.wait(timeout)

    def close(self) -> None:
        """Stop reading, and return once the reader is gone; the connection is
        then the caller's alone. What was read and not taken is dropped."""
        self._closed = True
        self._room.set()
        os.write(self._wake_in, b"x")
        self._thread.join()
        os.close(self._wake_out)
        os.close(self._wake_in)
        self._items.clear()

    def _run(self) -> None:
        pgconn, lock = self.pgconn, self.lock
        try:
            while not self._closed:
                self._keep_alive()
                if self._read - self._taken >= self.limit:
                    self._wait_for_room()
                    continue
                kept, reply = self._drain()
                if reply:
                    self._reply()
                if kept < 0:
                    return  # the stream ended
                if kept:
                    # More may have come meanwhile: read it without a wait, which
                    # would give Python's lock away and wait to get it back.
                    with lock:
                        pgconn.consume_input()
                    continue
                ready, _, _ = select.select(
                    [pgconn.socket, self._wake_out], [], [], _WAIT_SECONDS
                )
                if pgconn.socket in ready:
                    with lock:
                        pgconn.consume_input()
        except BaseException as exc:  # raised in order, on the taking thread
            self._put(exc)

    def _wait_for_room(self) -> None:
        # Cleared before the flag is raised and the count looked at again: a
        # taker that made room meanwhile sees the flag and sets the event.
        self._room.clear()
        self._full = True
        if self._read - self._taken >= self.limit:
            self._room.wait(_WAIT_SECONDS)

    def _drain(self) -> tuple[int, bool]:
        """Keep every message libpq holds whole, up to the bound: how many (-1
        once the stream has ended), and whether the server asked for our status."""
        pgconn, items, limit = self.pgconn, self._items, self.limit
        count = 0
        reply = False
        with self.lock:
            while self._read - self._taken < limit:
                size, data = pgconn.get_copy_data(1)
                if size == 0:
                    break
                count += 1
                if size < 0:
                    items.append(ENDED)
                    count = -1
                    break
                kind = data[0]
                if kind == _W:
                    row = data[_ROW_HEADER:].tobytes()
                    items.append(row)
                    self._read += len(row) + ROW_OVERHEAD
                elif kind == _K:
                    end, _, asked = _KEEPALIVE.unpack_from(data, 1)
                    items.append(Keepalive(end))
                    reply = reply or bool(asked)
                else:
                    items.append(UnexpectedMessage(chr(kind)))
                    count = -1
                    break
        if count:
            with self._arrived:
                self._arrived.notify()
        return count, reply

    def _put(self, item: Item) -> None:
        self._items.append(item)
        with self._arrived:
            self._arrived.notify()
