"""The replay window: ``--since`` and ``--until``, absolute or relative to now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from cdc_tracker.errors import ConfigError
from cdc_tracker.moments import parse_moment

__all__ = ["Window", "make_window", "parse_moment"]


# Wider than any clock change since 1995 (the largest, 3 h; Kwajalein's 23 h of
# 1969 is not covered): wall-clock bounds widened by it hold every row whose
# instant is in the window (rows outside are then left out one by one).
_CLOCK_CHANGE_MARGIN = timedelta(hours=3)


@dataclass(frozen=True, slots=True)
class Window:
    """Rows whose cursor value is in ``[since, until)``; both are aware (UTC)."""

    since: datetime
    until: datetime

    def bounds_for(self, cursor_type: str, zone: tzinfo) -> tuple[str, str]:
        """The bounds as SQL literals for a cursor column of ``cursor_type``.

        A ``timestamp without time zone`` column holds wall-clock times of the
        rulebook's zone, so the bounds are given to it as wall-clock times too;
        where the clocks change, a wall time is not one instant, so they are
        widened and ``holds`` decides each row.
        """
        if "without time zone" in cursor_type:
            margin = timedelta(0) if str(zone) == "UTC" else _CLOCK_CHANGE_MARGIN
            since = _wall(self.since, zone, -margin, datetime.min)
            until = _wall(self.until, zone, margin, datetime.max)
            return since.isoformat(), until.isoformat()
        return self.since.isoformat(), self.until.isoformat()

    def holds(self, moment: datetime) -> bool:
        """Whether a row's cursor instant is in the window."""
        return self.since <= moment < self.until


def _wall(
    moment: datetime, zone: tzinfo, margin: timedelta, limit: datetime
) -> datetime:
    """``moment`` as a wall time of ``zone``, moved by ``margin``; ``limit`` (the
    first or last time Python holds) where that runs past it."""
    try:
        return moment.astimezone(zone).replace(tzinfo=None) + margin
    except OverflowError:
        return limit


def make_window(since: str, until: str | None, now: datetime) -> Window:
    """Validate the window; raises ``ConfigError`` for a future or empty one."""
    start = parse_moment("--since", since, now)
    end = parse_moment("--until", until, now) if until else now
    if start > now:
        raise ConfigError(
            f"--since {since!r} is in the future ({start.isoformat()} > now)",
            hint="replay sends what already happened: give a past time or an age",
        )
    if end <= start:
        raise ConfigError(
            f"--until ({end.isoformat()}) is not after --since ({start.isoformat()})"
        )
    return Window(start, end)
