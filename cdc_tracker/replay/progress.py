"""Progress of a replay: a bar on a terminal, a periodic log line otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO

import structlog

log = structlog.get_logger(__name__)

BAR_WIDTH = 24
REDRAW_SECONDS = 0.1
LOG_SECONDS = 10.0


class Progress:
    """Counts rows done out of ``total`` and shows it with a rate and an ETA.

    On a terminal (``out`` given) one line is redrawn in place at most ten times
    a second; without one, a ``replay progress`` log line goes out every
    ``log_every`` seconds, with the rows done in the table being read
    (``table_rows_done``) and in every table (``rows_done`` of ``rows_total``).
    ``finish`` leaves the final state visible.
    """

    def __init__(
        self,
        total: int,
        out: IO[str] | None,
        *,
        log_every: float = LOG_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.done = 0
        self.per_table: dict[str, int] = {}
        self.out = out
        self.log_every = log_every
        self.clock = clock
        self.started = clock()
        self._shown = self.started

    def advance(self, rows: int, table: str) -> None:
        """Count ``rows`` more rows done, reading ``table``."""
        self.done += rows
        self.per_table[table] = self.per_table.get(table, 0) + rows
        now = self.clock()
        every = REDRAW_SECONDS if self.out is not None else self.log_every
        if now - self._shown >= every:
            self._shown = now
            self._show(table, now)

    def finish(self, table: str = "") -> None:
        """Show the last state (and end the terminal line)."""
        self._show(table, self.clock())
        if self.out is not None:
            self.out.write("\n")
            self.out.flush()

    def rate(self, now: float | None = None) -> float:
        """Rows per second since the start."""
        elapsed = (self.clock() if now is None else now) - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the rate so far (None before the first rows)."""
        rate = self.rate(now)
        return max(0.0, (self.total - self.done) / rate) if rate > 0 else None

    def line(self, table: str, now: float) -> str:
        """The terminal line: table, bar, percent, rows, rate, ETA."""
        share = min(1.0, self.done / self.total) if self.total else 1.0
        filled = round(share * BAR_WIDTH)
        eta = self.eta(now)
        return (
            f"{table:<24} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] "
            f"{share:4.0%} {self.done:,}/{self.total:,} rows "
            f"{self.rate(now):,.0f} rows/s ETA {_clock(eta)}"
        )

    def _show(self, table: str, now: float) -> None:
        if self.out is not None:
            self.out.write("\r" + self.line(table, now) + "\x1b[K")
            self.out.flush()
            return
        eta = self.eta(now)
        log.info(
            "replay progress",
            table=table,
            table_rows_done=self.per_table.get(table, 0),
            rows_done=self.done,
            rows_total=self.total,
            rows_per_s=round(self.rate(now)),
            eta_s=None if eta is None else round(eta),
        )


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
