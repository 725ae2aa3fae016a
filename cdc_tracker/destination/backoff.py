"""How long to wait before trying again: capped exponential backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Beyond this many doublings the ceiling is the cap anyway; stop before floats overflow.
_MAX_DOUBLINGS = 64


@dataclass(slots=True)
class Backoff:
    """Delays for successive retries of one failing destination or source.

    The n-th delay (from 0) is drawn uniformly from the upper half of a ceiling,
    ``min(cap, initial * factor**n)``: the waits grow with the failures, and
    daemons that failed together do not retry together. (Drawn from the whole
    range, a wait could be near zero after a minute of failures: a retry at
    once, at a server still down.) A server's ``Retry-After`` replaces the draw,
    bounded by ``retry_after_cap``. ``reset()`` after a success starts over.
    Tests shrink the constants and pass a seeded ``rng``.
    """

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    retry_after_cap: float = 300.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempts: int = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        """Return the seconds to wait before the next attempt, and count it."""
        doublings = min(self.attempts, _MAX_DOUBLINGS)
        self.attempts += 1
        if retry_after is not None and retry_after > 0:
            return min(retry_after, self.retry_after_cap)
        ceiling = min(self.cap, self.initial * self.factor**doublings)
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Forget past failures: the next delay is drawn from the smallest range."""
        self.attempts = 0


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for, or ``None``.

    Accepts delta-seconds (``"120"``) and an HTTP date, compared with ``now``
    (default: the current UTC time). A date in the past gives ``0.0``; an empty,
    negative or unreadable value gives ``None``.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())
