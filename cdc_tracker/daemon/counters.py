"""Running totals of the daemon, read by logs, ``/metrics`` and readiness.

Plain numbers updated on the hot path at the cost of an addition; the metrics
module turns them into Prometheus families only when scraped.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# Commit-to-acknowledged delay buckets, in seconds.
DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(slots=True)
class DelayHistogram:
    """A cumulative-ready histogram of delays (counts per bucket, sum, count)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DELAY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(DELAY_BUCKETS, seconds)] += times
        self.total += seconds * times
        self.count += times


def _nothing_read() -> int:
    return 0


@dataclass(slots=True)
class Counters:
    """What the daemon did since it started; drops counted by reason."""

    changes: int = 0
    calls: int = 0
    batches: int = 0
    truncates: int = 0
    dead_letters: int = 0
    calls_by_event: dict[tuple[str, str], int] = field(default_factory=dict)
    drops_by_reason: dict[str, int] = field(default_factory=dict)
    reloads: int = 0
    reload_failures: int = 0
    lag_bytes: int = 0
    # Bytes of rows read from the server ahead of mapping: the open stream's own
    # count, asked at scrape time (a delivery waiting out an outage holds the loop).
    read_ahead: Callable[[], int] = _nothing_read
    missing_tables: list[str] = field(default_factory=list)
    # Rules not fired because a lookup found no row (missing: skip), by rule id;
    # the lookups of every rulebook the daemon loads count here.
    lookup_skips: dict[str, int] = field(default_factory=dict)
    # Where the rulebook stopped fitting the schema while running (file:line: why).
    schema_problems: list[str] = field(default_factory=list)
    delay: DelayHistogram = field(default_factory=DelayHistogram)
    started_at: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)

    def count_drop(self, reason: str) -> None:
        self.dead_letters += 1
        key = reason.split(":", 1)[0].split("(", 1)[0].strip()
        self.drops_by_reason[key] = self.drops_by_reason.get(key, 0) + 1

    def count_calls(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Add delivered calls, counted by (type, event)."""
        for key, count in counts.items():
            self.calls_by_event[key] = self.calls_by_event.get(key, 0) + count
