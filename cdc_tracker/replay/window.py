"""The replay window: ``--since`` and ``--until``, absolute or relative to now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo

from cdc_tracker.errors import ConfigError
from cdc_tracker.moments import parse_moment

__all__ = ["Window", "make_window", "parse_moment"]


@dataclass(frozen=True, slots=True)
class Window:
    """Rows whose cursor value is in ``[since, until)``; both are aware (UTC)."""

    since: datetime
    until: datetime

    def bounds_for(self, cursor_type: str, zone: tzinfo) -> tuple[str, str]:
        """The bounds as SQL literals for a cursor column of ``cursor_type``.

        A ``timestamp without time zone`` column holds wall-clock times of the
        rulebook's zone, so the bounds are given to it as wall-clock times too.
        """
        if "without time zone" in cursor_type:
            return tuple(  # type: ignore[return-value]
                moment.astimezone(zone).replace(tzinfo=None).isoformat()
                for moment in (self.since, self.until)
            )
        return self.since.isoformat(), self.until.isoformat()


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
