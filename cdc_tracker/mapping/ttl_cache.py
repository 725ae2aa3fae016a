"""A small LRU cache whose entries also expire: related rows change, slowly."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class TtlCache:
    """At most ``entries`` values, each served for ``ttl`` seconds after it was put.

    ``get`` returns ``(True, value)`` for a fresh entry (and marks it recently
    used) or ``(False, None)``; ``put`` evicts the least recently used entries
    beyond the bound. Safe to share between threads.
    """

    def __init__(
        self,
        entries: int,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if entries < 1:
            raise ValueError(f"a cache needs room for one entry, got {entries}")
        self.entries = entries
        self.ttl = ttl
        self._clock = clock
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> tuple[bool, Any]:
        with self._lock:
            found = self._data.get(key)
            if found is None:
                return False, None
            if found[0] <= self._clock():
                del self._data[key]
                return False, None
            self._data.move_to_end(key)
            return True, found[1]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = (self._clock() + self.ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self.entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
