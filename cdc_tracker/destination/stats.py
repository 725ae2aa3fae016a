"""What delivery did: per-call results for the caller, running counters for metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cdc_tracker.destination.batching import EncodedCall


@dataclass(slots=True)
class DeliveryResult:
    """The outcome of one ``deliver`` call.

    ``delivered`` calls were acknowledged by a 2xx; ``dead_letters`` were refused
    for good (with the reason) and must not be resent; ``pending`` holds, in order,
    the calls neither delivered nor dead-lettered because a stop was requested
    while waiting to resend. ``pending`` is empty when delivery ran to the end.
    """

    delivered: int = 0
    dead_letters: list[tuple[EncodedCall, str]] = field(default_factory=list)
    pending: list[EncodedCall] = field(default_factory=list)
    requests: int = 0
    retries: int = 0

    @property
    def interrupted(self) -> bool:
        """Whether a stop left calls undelivered (they are in ``pending``)."""
        return bool(self.pending)


@dataclass(slots=True)
class DeliveryStats:
    """Running counters since the client started, for metrics and status.

    ``calls_sent`` counts every call in every request, resends included;
    ``calls_delivered`` only those a 2xx acknowledged. ``errors_by_status`` is keyed
    by HTTP status (``"429"``) or by ``"timeout"`` / ``"connection"``. ``paused`` is
    true while the destination refuses our credentials or URL, ``refusing``
    while it refuses every call it is sent (readiness should fail for both);
    ``consecutive_failures`` counts failed requests since the last answer.
    """

    requests: int = 0
    calls_sent: int = 0
    bytes_sent: int = 0
    calls_delivered: int = 0
    calls_dead_lettered: int = 0
    retries: int = 0
    errors_by_status: dict[str, int] = field(default_factory=dict)
    consecutive_failures: int = 0
    paused: bool = False
    refusing: bool = False  # every call of a request refused: waited out
    last_error: str | None = None

    def count_error(self, key: str) -> None:
        """Count one failed request under ``key``."""
        self.errors_by_status[key] = self.errors_by_status.get(key, 0) + 1
        self.last_error = key

    def snapshot(self) -> DeliveryStats:
        """A copy safe to read while delivery goes on in another thread."""
        return replace(self, errors_by_status=dict(self.errors_by_status))


class LogThrottle:
    """Lets a repeated log line through once, then at most once per ``interval`` s."""

    def __init__(
        self, interval: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self.suppressed = 0

    def allow(self) -> bool:
        """Whether to log now; when not, the line is counted in ``suppressed``."""
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self.suppressed += 1
            return False
        self._last = now
        return True

    def take_suppressed(self) -> int:
        """Return how many lines were held back since the last call, and restart."""
        count, self.suppressed = self.suppressed, 0
        return count

    def reset(self) -> None:
        """Let the next line through at once (after a recovery)."""
        self._last = None
        self.suppressed = 0
