"""``ProcessShipper``: the daemon's deliveries, made by a process of their own.

See ``destination.worker`` for why and for what crosses the pipe. The shipping
thread of the window calls ``ship`` as it would ``DestinationShipper.ship``; the
answer is the same ``Outcome``, its dead letters and pending calls the window's
own ``EncodedCall`` objects. ``stats`` follows the worker's delivery counters
for ``/metrics`` and ``/readyz``.

If the worker dies (killed, out of memory, a bug), a new one is started and the
batch is sent again whole: none of it was confirmed to the slot, and calls the
destination took already are sent with the same messageIds. A worker dying
again on the same batch is a ``DeliveryError``: the daemon stops, and a
restart reads the batch again. ``stats`` adds up the counters of every worker
so far, so that /metrics never goes back. Once a stop is asked, the worker has
the request in flight's timeout and ``END_SECONDS`` more to answer; then it is
killed, its batch counted as not delivered.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from dataclasses import asdict, fields
from typing import Any

import structlog

from cdc_tracker.daemon.shipping import Outcome, undeliverable
from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.destination.settings import DestinationSettings
from cdc_tracker.destination.stats import DeliveryStats
from cdc_tracker.destination.worker import FrameError, FrameReader, FrameWriter
from cdc_tracker.errors import DeliveryError

log = structlog.get_logger(__name__)

# How often a wait for the worker looks at the stop.
_WAIT_SECONDS = 0.2
# How long the worker has to start, and to end once its input is closed.
START_SECONDS = 60.0
END_SECONDS = 15.0
# Counters that add up across workers; the other fields are the live worker's.
_COUNTERS = (
    "requests",
    "calls_sent",
    "bytes_sent",
    "calls_delivered",
    "calls_dead_lettered",
    "retries",
)
_FIELDS = [field.name for field in fields(DeliveryStats)]


class WorkerDied(Exception):
    """The worker process ended without being asked to."""


class ProcessShipper:
    """Ships through a ``destination.worker`` process it starts and stops."""

    def __init__(
        self,
        settings: DestinationSettings,
        *,
        log_format: str = "auto",
        log_level: str = "info",
    ) -> None:
        self.settings = settings
        self.stats = DeliveryStats()
        # The counters of the workers before this one (see _take_stats).
        self._before = DeliveryStats()
        self._latest = DeliveryStats()
        self._hello = {
            "settings": asdict(settings),
            "log_format": log_format,
            "log_level": log_level,
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._start()

    def __enter__(self) -> ProcessShipper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def ship(self, calls: list[EncodedCall], stop: threading.Event) -> Outcome:
        if not calls:
            return Outcome()
        if self._process is not None and self._process.poll() is not None:
            # It died between batches: nothing of this one was sent yet.
            log.error(
                "shipping process died while idle: starting a new one",
                reason=self._ended(),
            )
            self._start()
        for attempt in (1, 2):
            try:
                return self._ship(calls, stop)
            except WorkerDied as died:
                if stop.is_set():
                    return Outcome(interrupted=True, pending=list(calls))
                if attempt == 2:
                    raise DeliveryError(
                        f"the shipping process died twice on one batch ({died})",
                        hint="its error is logged above; a restart reads the "
                        "batch again",
                    ) from died
                log.error(
                    "shipping process died: starting a new one, which sends its "
                    "batch again",
                    reason=str(died),
                    calls=len(calls),
                )
                self._start()
        raise AssertionError("unreachable: the second attempt returns or raises")

    def close(self) -> None:
        """Close the worker's input and wait for it to end."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(END_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("shipping process did not end: killed", pid=process.pid)
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def _start(self) -> None:
        self.close()
        self._before = _added(self._before, self._latest)
        self._latest = DeliveryStats()
        process = subprocess.Popen(
            # -P: the worker imports what the daemon does, whatever the directory.
            [sys.executable, "-P", "-m", "cdc_tracker.destination.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            # A group of its own: Ctrl-C, SIGHUP or SIGTERM sent to the daemon's
            # group (a terminal, a service manager) are the daemon's to handle,
            # even while the worker starts, before it ignores them.
            process_group=0,
        )
        self._process = process
        assert process.stdin is not None
        assert process.stdout is not None
        self._writer = FrameWriter(process.stdin.fileno())
        self._reader = FrameReader(process.stdout.fileno())
        try:
            self._send(self._hello)
            ready = self._receive(START_SECONDS)
        except WorkerDied as died:
            self.close()
            raise DeliveryError(
                f"the shipping process did not start ({died})",
                hint="its error is logged above",
            ) from died
        if ready is None or not ready.get("ready"):
            self.close()
            raise DeliveryError(
                f"the shipping process did not start within {START_SECONDS:.0f} s"
            )
        log.debug("shipping process started", pid=process.pid)

    def _ship(self, calls: list[EncodedCall], stop: threading.Event) -> Outcome:
        self._send(
            {
                "bodies": [call.body for call in calls],
                "ids": [call.message_id for call in calls],
                "rules": [call.rule for call in calls],
            }
        )
        given_up_at = None  # once a stop is asked: when the worker is killed
        while True:
            if stop.is_set() and given_up_at is None:
                self._send({"stop": True})
                given_up_at = time.monotonic() + self.settings.timeout + END_SECONDS
            message = self._receive(_WAIT_SECONDS)
            if message is None:
                if given_up_at is not None and time.monotonic() > given_up_at:
                    log.warning(
                        "shipping process did not answer the stop: killed; its "
                        "batch is read again at the next start",
                        calls=len(calls),
                    )
                    self._kill()
                    raise WorkerDied("no answer after a stop; killed")
                continue
            if "stats" in message:
                self._take_stats(message["stats"])
            if "outcome" in message:
                return _outcome(calls, message["outcome"])

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._writer.send(message)
        except OSError as exc:
            raise WorkerDied(self._ended()) from exc

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._reader.next(timeout)
        except EOFError as exc:
            raise WorkerDied(self._ended()) from exc
        except FrameError as exc:
            self._kill()
            raise WorkerDied(f"{exc}; killed") from exc

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()

    def _ended(self) -> str:
        """Why the worker is gone, once it is."""
        process = self._process
        if process is None:
            return "not running"
        try:
            code = process.wait(END_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            return "its pipe closed; killed"
        if code < 0:
            return f"killed by signal {-code}"
        return f"exit code {code}"

    def _take_stats(self, stats: dict[str, Any]) -> None:
        """The live worker's counters, added to its predecessors'."""
        latest = DeliveryStats(**stats)
        self._latest = latest
        total = _added(self._before, latest)
        for name in _FIELDS:
            setattr(self.stats, name, getattr(total, name))


def _added(before: DeliveryStats, latest: DeliveryStats) -> DeliveryStats:
    """``latest`` with ``before``'s counters added (its states its own)."""
    total = latest.snapshot()
    for name in _COUNTERS:
        setattr(total, name, getattr(before, name) + getattr(latest, name))
    errors = dict(before.errors_by_status)
    for key, count in latest.errors_by_status.items():
        errors[key] = errors.get(key, 0) + count
    total.errors_by_status = errors
    return total


def _outcome(calls: list[EncodedCall], answer: dict[str, Any]) -> Outcome:
    """The worker's answer about ``calls``, in the window's own objects."""
    pending = [calls[index] for index in answer["pending"]]
    return Outcome(
        delivered=answer["delivered"],
        bytes=answer["bytes"],
        requests=answer["requests"],
        dead_letters=[
            undeliverable(calls[index], reason) for index, reason in answer["dead"]
        ],
        interrupted=bool(pending),
        pending=pending,
    )
