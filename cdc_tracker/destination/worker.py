"""Delivery in a process of its own: ``python -m cdc_tracker.destination.worker``.

The daemon's main thread reads, parses and maps under Python's one lock. A
shipping thread beside it takes that lock for each request's Python (batching,
httpx, the answer) and waits for it again after each system call, so each slows
the other. The daemon runs delivery here instead (``daemon.ship_process``), and
its shipping thread only writes a batch's bytes to this process and waits for
the outcome.

The two talk through this process's standard input and output in frames: a
4-byte big-endian length, then a MessagePack map. In (from the daemon):

- ``{"settings": {...}, "log_format": ..., "log_level": ...}`` first, once;
  answered ``{"ready": true}`` once the client is made;
- ``{"bodies": [...], "ids": [...], "rules": [...]}``: a batch of encoded calls
  (without ``sentAt``), their messageIds and rules, to deliver in order;
- ``{"stop": true}``: give up the batch being delivered at its next wait (the
  daemon is stopping).

Out: ``{"stats": {...}}`` whenever the delivery counters change (every
``STATS_SECONDS`` at most, so that ``/readyz`` sees an outage while it lasts),
and ``{"outcome": {...}, "stats": {...}}`` once a batch is over: delivered, bytes,
requests, the dead letters as ``[index, reason]`` and the pending calls' indices.

Standard input closing ends the process: at once when a batch is still
unanswered (the daemon died, or was told twice to stop), or else once idle. It
ignores SIGINT, SIGTERM and SIGHUP, which a terminal or a service manager sends
to the whole group (SIGHUP reloads the daemon's rulebook): the daemon stops it in
order. The frames go out on a copy of standard output made at start, and
standard output itself then points at standard error: nothing printed by mistake
can break a frame. A delivery that fails in a way delivery does not handle (a
bug) is logged and ends the process with code 70, and the daemon starts a new
one.
"""

from __future__ import annotations

import os
import queue
import select
import signal
import struct
import sys
import threading
from dataclasses import asdict
from itertools import repeat
from typing import Any

import msgspec
import structlog

from cdc_tracker import logs
from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.destination.settings import DestinationSettings
from cdc_tracker.model import Lsn

log = structlog.get_logger(__name__)

STATS_SECONDS = 0.5
# No frame is this large (a batch is a few MB): a length past it is not a frame.
MAX_FRAME = 1 << 30
CRASHED = 70  # the exit code of a worker whose delivery failed unexpectedly
_NOWHERE = Lsn(0)  # the calls' positions stay with the daemon
_LENGTH = struct.Struct("!I")
# The frame buffer kept between sends: a batch of 2,000 calls is a few MB.
KEEP_BUFFER = 16 << 20
_encode_into = msgspec.msgpack.Encoder().encode_into
_decode = msgspec.msgpack.Decoder(dict[str, Any]).decode


class FrameWriter:
    """Writes frames to a pipe; safe to share between threads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        # Reused: a batch's frame is megabytes, encoded in place after its length.
        self._buffer = bytearray()

    def send(self, message: dict[str, Any]) -> None:
        """Raises ``OSError`` (``BrokenPipeError``) once the reader is gone."""
        with self._lock:
            buffer = self._buffer
            _encode_into(message, buffer, _LENGTH.size)
            _LENGTH.pack_into(buffer, 0, len(buffer) - _LENGTH.size)
            data = memoryview(buffer)
            try:
                while data:
                    data = data[os.write(self.fd, data) :]
            finally:
                data.release()  # or the buffer could not be resized next time
            if len(buffer) > KEEP_BUFFER:
                self._buffer = bytearray()  # a rare large frame: not kept for life


class FrameError(Exception):
    """The pipe holds something that is not a frame."""


class FrameReader:
    """Reads frames from a pipe, waiting at most a given time for the next.

    Each frame is read straight into a buffer of its own size: a batch's frame is
    megabytes, and growing one buffer by the pipe's chunks copied it again and
    again (a tenth of the shipping process's time)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._length = bytearray(_LENGTH.size)
        self._frame: bytearray | None = None  # its length read: the frame
        self._got = 0  # bytes of the length, then of the frame, read

    def next(self, timeout: float | None) -> dict[str, Any] | None:
        """The next frame's message; None when none is whole within ``timeout``.
        Raises ``EOFError`` once the writer is gone, ``FrameError`` for bytes
        that are no frame."""
        while True:
            target = self._length if self._frame is None else self._frame
            if self._got == len(target):
                message = self._finish()
                if message is not None:
                    return message
                continue
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return None
            got = os.readv(self.fd, [memoryview(target)[self._got :]])
            if not got:
                raise EOFError("the other process closed the pipe")
            self._got += got

    def _finish(self) -> dict[str, Any] | None:
        """The length read: make room for the frame. The frame read: decode it."""
        self._got = 0
        if self._frame is None:
            (size,) = _LENGTH.unpack(self._length)
            if size > MAX_FRAME:
                raise FrameError(f"a frame of {size} bytes announced")
            self._frame = bytearray(size)
            return None
        frame, self._frame = self._frame, None
        try:
            message: dict[str, Any] = _decode(frame)
        except msgspec.DecodeError as exc:
            raise FrameError(f"an unreadable frame: {exc}") from exc
        return message


class Reporter:
    """Sends the delivery counters when they changed, and outcomes with them:
    one at a time, so that counters never arrive older than an outcome's."""

    def __init__(self, out: FrameWriter, client: RudderStackClient) -> None:
        self.out = out
        self.client = client
        self._lock = threading.Lock()
        self._sent: dict[str, Any] | None = None
        self.outcomes = 0  # sent

    def report(self, outcome: dict[str, Any] | None = None) -> None:
        with self._lock:
            stats = asdict(self.client.stats.snapshot())
            if outcome is not None:
                self.out.send({"outcome": outcome, "stats": stats})
                self.outcomes += 1
            elif stats != self._sent:
                self.out.send({"stats": stats})
            self._sent = stats


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    frames = FrameReader(sys.stdin.fileno())
    # The frames' own copy of standard output, which then goes to standard error.
    out = FrameWriter(os.dup(sys.stdout.fileno()))
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        hello = frames.next(timeout=None)
    except EOFError:
        return 0
    assert hello is not None
    logs.configure(hello["log_format"], hello["log_level"])
    with RudderStackClient(DestinationSettings(**hello["settings"])) as client:
        out.send({"ready": True})
        _serve(frames, Reporter(out, client), client)
    return 0


def _serve(frames: FrameReader, reporter: Reporter, client: RudderStackClient) -> None:
    """Read batches and stops until standard input closes; deliver on a thread."""
    work: queue.SimpleQueue[tuple[list[EncodedCall], threading.Event] | None]
    work = queue.SimpleQueue()
    deliverer = threading.Thread(
        target=_deliver_each, args=(work, reporter, client), name="cdc-tracker-deliver"
    )
    deliverer.start()
    stop = threading.Event()  # the batch being delivered: the latest one sent
    batches = 0
    reporter.report()
    try:
        while True:
            try:
                message = frames.next(STATS_SECONDS)
            except EOFError:
                break
            if message is not None and "bodies" in message:
                stop = threading.Event()
                work.put((_calls(message), stop))
                batches += 1
            elif message is not None and message.get("stop"):
                stop.set()
            reporter.report()
    except BrokenPipeError:
        pass  # the daemon is gone
    finally:
        if batches > reporter.outcomes:
            _abandon(batches - reporter.outcomes)
        stop.set()
        work.put(None)
        deliverer.join()


def _abandon(batches: int) -> None:
    """The daemon is gone with a batch not answered (killed, or told twice to
    stop): it confirmed nothing past it, so the next daemon reads it again. End
    now rather than send the rest beside that daemon, out of order."""
    log.warning(
        "shipping process: the daemon is gone before the outcome of a batch; "
        "it ends without sending the rest",
        batches=batches,
    )
    sys.stderr.flush()
    os._exit(0)


def _calls(message: dict[str, Any]) -> list[EncodedCall]:
    """The batch's calls, numbered by their place in it (``ordinal``): only what
    delivery reads of them crosses the pipe."""
    bodies = message["bodies"]
    blank = repeat("")
    return list(
        map(
            EncodedCall,
            message["ids"],
            blank,
            bodies,
            message["rules"],
            blank,
            repeat(_NOWHERE),
            range(len(bodies)),
            blank,
            blank,
        )
    )


def _deliver_each(
    work: queue.SimpleQueue[tuple[list[EncodedCall], threading.Event] | None],
    reporter: Reporter,
    client: RudderStackClient,
) -> None:
    while (item := work.get()) is not None:
        calls, stop = item
        sent_before = client.stats.bytes_sent
        try:
            result = client.deliver(calls, stop)
        except BaseException:
            # Not a failure delivery handles (those are retried or dead letters):
            # a bug, or memory running out. A new worker sends the batch again.
            log.exception(
                "shipping process: delivery failed unexpectedly; it exits and the "
                "daemon starts a new one",
                calls=len(calls),
            )
            sys.stderr.flush()
            os._exit(CRASHED)
        outcome = {
            "delivered": result.delivered,
            "bytes": client.stats.bytes_sent - sent_before,
            "requests": result.requests,
            "dead": [[call.ordinal, reason] for call, reason in result.dead_letters],
            "pending": [call.ordinal for call in result.pending],
        }
        try:
            reporter.report(outcome)
        except BrokenPipeError:
            log.warning(
                "shipping process: the daemon is gone before the outcome of a batch",
                delivered=result.delivered,
            )
            return


if __name__ == "__main__":
    sys.exit(main())
