"""Faults the fake RudderStack injects in front of its gateway checks.

Scheduled faults form a queue: each POST takes the oldest one, so
``fail_next(2); drop_next(1)`` fails two requests and then drops the third. A
``fail_for`` window applies to requests that find the queue empty.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal

from cdc_tracker.testing._rudder_checks import RATE_LIMITED, STALLED, Answer

FaultKind = Literal["fail", "stall", "drop"]


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected misbehaviour; ``status``/``retry_after`` for fail, ``seconds``
    for stall."""

    kind: FaultKind
    status: int = 503
    retry_after: str | None = None
    seconds: float = 0.0

    def answer(self) -> Answer:
        """The reply a ``fail`` or a finished ``stall`` gives."""
        if self.kind == "stall":
            return STALLED
        headers = (
            () if self.retry_after is None else (("Retry-After", self.retry_after),)
        )
        return Answer(self.status, _failure_text(self.status), headers)


def _failure_text(status: int) -> str:
    if status == RATE_LIMITED.status:
        return RATE_LIMITED.body
    try:
        return f"{HTTPStatus(status).phrase.lower()}\n"
    except ValueError:
        return "injected failure\n"


class FaultPlan:
    """A thread-safe queue of scheduled faults plus an optional failure window."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._window: tuple[float, Fault] | None = None

    def schedule(self, fault: Fault, times: int) -> None:
        """Apply ``fault`` to ``times`` more requests, after those already queued."""
        if times < 0:
            raise ValueError(f"times must be >= 0, got {times}")
        with self._lock:
            self._queue.extend([fault] * times)

    def fail_for(self, seconds: float, fault: Fault) -> None:
        """Apply ``fault`` to every request for ``seconds`` from now."""
        with self._lock:
            self._window = (time.monotonic() + seconds, fault)

    def take(self, now: float) -> Fault | None:
        """The fault for a request arriving at ``now`` (monotonic), if any."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            if self._window is not None and now < self._window[0]:
                return self._window[1]
            return None

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._window = None
