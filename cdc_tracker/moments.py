"""Times: given on the command line (ISO 8601, or an age counted back from now),
and wall times of a zone read as PostgreSQL reads them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo

from cdc_tracker.errors import ConfigError

_AGE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_moment(flag: str, text: str, now: datetime) -> datetime:
    """``2026-11-01``, ``2026-11-01T12:00+01:00`` (naive is UTC) or an age: ``7d``.

    Ages count back from ``now``: ``30m``, ``12h``, ``7d``, ``2w`` (also ``s``).
    Raises ``ConfigError`` naming the flag when the text is neither.
    """
    age = _AGE.fullmatch(text.strip())
    if age:
        try:
            return now - timedelta(**{_UNITS[age[2]]: int(age[1])})
        except OverflowError:
            raise ConfigError(
                f"{flag} {text!r} reaches back before the year 1",
                hint=f"e.g. {flag} 7d, or a date: {flag} 2026-11-01",
            ) from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r} is neither an ISO 8601 time nor an age",
            hint=f"e.g. {flag} 2026-11-01, {flag} '2026-11-01T08:00+01:00', "
            f"{flag} 7d (s, m, h, d, w)",
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def wall_time(naive: datetime, zone: tzinfo) -> datetime:
    """A wall time in ``zone`` read as PostgreSQL reads it: one the clocks show
    twice (they went back) is the later, one they skip (they went forward) has
    the offset from before the change."""
    later = naive.replace(tzinfo=zone, fold=1)
    if later.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive:
        return later
    return naive.replace(tzinfo=zone)  # skipped: fold 0 keeps the earlier offset
