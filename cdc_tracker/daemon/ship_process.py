"""``ProcessShipper``: the daemon's deliveries, made by a process of their own.

See ``destination.worker`` for why and for what crosses the pipe. The shipping
thread of the window calls ``ship`` as it would ``DestinationShipper.ship``; the
answer is the same ``Outcome``, its dead letters and pending calls the window's
own ``EncodedCall`` objects. ``stats`` follows the worker's delivery counters
for ``/metrics`` and ``/readyz``.

If the worker dies (killed, out of memory), a new one is started and the batch
is sent again whole: none of it was confirmed to the slot, and calls the
destination took already are sent with the same messageIds. A worker dying
again on the same batch is a ``DeliveryError``: the daemon stops, and a
restart reads the batch again.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from dataclasses import asdict, fields
from typing import Any

import structlog

from cdc_tracker.daemon.shipping import Outcome, undeliverable
from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.destination.settings import DestinationSettings
from cdc_tracker.destination.stats import DeliveryStats
from cdc_tracker.destination.worker import FrameReader, FrameWriter
from cdc_tracker.errors import DeliveryError

log = structlog.get_logger(__name__)

# How often a wait for the worker looks at the stop.
_WAIT_SECONDS = 0.2
# How long the worker has to start, and to end once its input is closed.
START_SECONDS = 60.0
END_SECONDS = 15.0
_STAT_FIELDS = [field.name for field in fields(DeliveryStats)]


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
        try:
            return self._ship(calls, stop)
        except WorkerDied as died:
            if stop.is_set():
                return Outcome(interrupted=True, pending=list(calls))
            log.error(
                "shipping process died: starting a new one, which sends its "
                "batch again",
                reason=str(died),
                calls=len(calls),
            )
        self._start()
        try:
            return self._ship(calls, stop)
        except WorkerDied as died:
            if stop.is_set():
                return Outcome(interrupted=True, pending=list(calls))
            raise DeliveryError(
                f"the shipping process died twice on one batch ({died})",
                hint="its error is logged above; a restart reads the batch again",
            ) from died

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
        process = subprocess.Popen(
            [sys.executable, "-m", "cdc_tracker.destination.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
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
        stopping = False
        while True:
            if stop.is_set() and not stopping:
                self._send({"stop": True})
                stopping = True
            message = self._receive(_WAIT_SECONDS)
            if message is None:
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
        for name in _STAT_FIELDS:
            if name in stats:
                setattr(self.stats, name, stats[name])


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
