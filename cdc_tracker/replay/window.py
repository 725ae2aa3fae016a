"""The replay window: ``--since`` and ``--until``, absolute or relative to now."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from cdc_tracker.errors import ConfigError

_AGE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


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


def parse_moment(flag: str, text: str, now: datetime) -> datetime:
    """``2026-11-01``, ``2026-11-01T12:00+01:00`` (naive is UTC) or an age: ``7d``.

    Ages count back from ``now``: ``30m``, ``12h``, ``7d``, ``2w`` (also ``s``).
    Raises ``ConfigError`` naming the flag when the text is neither.
    """
    age = _AGE.fullmatch(text.strip())
    if age:
        return now - timedelta(**{_UNITS[age[2]]: int(age[1])})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r} is neither an ISO 8601 time nor an age",
            hint=f"e.g. {flag} 2026-11-01, {flag} '2026-11-01T08:00+01:00', "
            f"{flag} 7d (s, m, h, d, w)",
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


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
