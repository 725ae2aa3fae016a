"""``--rate``: cap the calls sent per second, without bursts to catch up."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator

from cdc_tracker.destination.batching import EncodedCall

# Chunks of a tenth of a second's worth of calls keep the flow even.
CHUNKS_PER_SECOND = 10


class Pacer:
    """Splits calls into chunks and holds each until the rate allows it.

    With ``rate=None`` the calls pass as one chunk, at once. A stop ends the
    chunks early: the caller sees fewer calls than it gave and treats the rest as
    not sent.
    """

    def __init__(
        self,
        rate: float | None,
        max_chunk: int,
        stop: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.stop = stop
        self.clock = clock
        self.chunk = max_chunk
        if rate is not None:
            self.chunk = max(1, min(max_chunk, math.ceil(rate / CHUNKS_PER_SECOND)))
        self._due: float | None = None

    def chunks(self, calls: list[EncodedCall]) -> Iterator[list[EncodedCall]]:
        """The calls in order, in chunks released no faster than the rate."""
        if self.rate is None:
            if calls:
                yield calls
            return
        for start in range(0, len(calls), self.chunk):
            chunk = calls[start : start + self.chunk]
            if not self._wait(len(chunk), self.rate):
                return
            yield chunk

    def _wait(self, n: int, rate: float) -> bool:
        now = self.clock()
        if self._due is None or self._due < now:
            self._due = now  # behind (a slow destination): no catch-up burst
        delay = self._due - now
        self._due += n / rate
        return delay <= 0 or not self.stop.wait(delay)
