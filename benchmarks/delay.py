"""A steady write load, for delay from commit to acknowledgement."""

from __future__ import annotations

import time

from benchmarks.workload import Generator

TX_ROWS = 10


def steady_load(generator: Generator, changes_per_s: int, seconds: float) -> float:
    """Commit ``TX_ROWS``-row transactions on a fixed schedule; return the rate kept.

    The schedule is absolute, so a slow commit is caught up rather than drifting.
    """
    interval = TX_ROWS / changes_per_s
    started = time.monotonic()
    n = 0
    while (due := started + n * interval) < started + seconds:
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        generator.transaction(TX_ROWS)
        n += 1
    return n * TX_ROWS / (time.monotonic() - started)


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of ``values`` (``share`` in 0..1)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))
    return ordered[rank]
