"""Backoff: jitter in the upper half of a growing, capped ceiling; Retry-After
honoured."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from cdc_tracker.destination import Backoff, parse_retry_after


def test_delays_grow_within_a_ceiling_that_doubles_up_to_the_cap() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, cap=8.0, rng=random.Random(7))

    ceilings = [1, 2, 4, 8, 8, 8]
    delays = [backoff.next_delay() for _ in ceilings]

    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))


def test_jitter_spreads_delays_over_the_upper_half_of_the_ceiling() -> None:
    backoff = Backoff(initial=10.0, cap=10.0, rng=random.Random(1))

    delays = [backoff.next_delay() for _ in range(200)]

    assert min(delays) >= 5.0
    assert min(delays) < 5.5
    assert max(delays) > 9.5


def test_retry_after_replaces_the_draw_up_to_its_cap() -> None:
    backoff = Backoff(cap=1.0, retry_after_cap=30.0)

    assert backoff.next_delay(12.5) == 12.5
    assert backoff.next_delay(4000.0) == 30.0
    assert backoff.attempts == 2


def test_reset_starts_over_from_the_smallest_range() -> None:
    backoff = Backoff(initial=1.0, cap=1000.0, rng=random.Random(3))
    for _ in range(10):
        backoff.next_delay()

    backoff.reset()

    assert backoff.attempts == 0
    assert 0.5 <= backoff.next_delay() <= 1.0


def test_many_attempts_do_not_overflow_nor_wait_past_half_a_minute() -> None:
    backoff = Backoff(attempts=10_000)

    assert 15.0 <= backoff.next_delay() <= 30.0


NOW = datetime(2026, 12, 4, 16, 42, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Fri, 04 Dec 2026 16:43:30 GMT", 90.0),
        ("Fri, 04 Dec 2026 16:00:00 GMT", 0.0),
        (None, None),
        ("", None),
        ("-5", None),
        ("soon", None),
        ("1.5", None),
    ],
)
def test_retry_after_header_is_read_as_seconds_or_http_date(
    header: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(header, now=NOW) == seconds
