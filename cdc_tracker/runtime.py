"""Process-wide settings for the long runs (the daemon, a replay)."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a stream of short-lived rows.

    The hot path allocates many small containers and makes no cycles. With the
    default thresholds the collector ran every 700 allocations, and its periodic
    full collections walked every live object: on the benchmark's changes
    (parsed, mapped and encoded in one process) collection took about a fifth of
    the CPU. Freezing what exists after start-up (modules, the rulebook) takes it
    out of every scan; collecting young objects every 50,000 allocations keeps
    memory bounded for the rare cycle at a fraction of the cost.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
