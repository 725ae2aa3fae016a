"""Notice when the rulebook file changes, or when SIGHUP asks for a reload.

Kubernetes updates a ConfigMap by swapping a symlink, so the file's path stays the
same while the file behind it changes: the watcher compares the resolved path,
inode, size and modification time, which catches edits in place and swaps alike.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

CHECK_SECONDS = 1.0
# A swap leaves the path empty for an instant; this many checks in a row is not.
MISSING_CHECKS = 2

Signature = tuple[str, int, int, int]


class RulebookWatcher:
    """Says, at most once per ``interval`` seconds, whether the file changed."""

    def __init__(self, path: Path, interval: float = CHECK_SECONDS) -> None:
        self.path = path
        self.interval = interval
        self.requested = threading.Event()  # set by SIGHUP
        self._seen = self._signature()
        self._checked = time.monotonic()
        self._missing = 0  # checks in a row that found no file

    def due(self) -> bool:
        """True when a reload was requested or the file changed since last time."""
        if self.requested.is_set():
            self.requested.clear()
            self._seen = self._signature()
            return True
        now = time.monotonic()
        if now - self._checked < self.interval:
            return False
        self._checked = now
        signature = self._signature()
        if signature is None:
            self._note_missing()
            return False  # a file missing mid-swap is looked at again later
        if self._missing >= MISSING_CHECKS:
            log.info("rulebook file is back", path=str(self.path))
        self._missing = 0
        if signature == self._seen:
            return False
        self._seen = signature
        return True

    def _note_missing(self) -> None:
        self._missing += 1
        if self._missing == MISSING_CHECKS:
            log.warning(
                "rulebook file is missing; the rules loaded last stay in force",
                path=str(self.path),
            )

    def _signature(self) -> Signature | None:
        try:
            real = os.path.realpath(self.path)
            stat = os.stat(real)
        except OSError:
            return None
        return (real, stat.st_ino, stat.st_size, stat.st_mtime_ns)
