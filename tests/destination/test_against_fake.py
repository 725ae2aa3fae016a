"""The client against the strict fake data plane, over real loopback HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal

import pytest

from cdc_tracker.destination import (
    Backoff,
    DestinationSettings,
    EncodedCall,
    RudderStackClient,
)
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.destination.conftest import WRITE_KEY, encoded, make_call

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake() -> Iterator[FakeRudderStack]:
    with FakeRudderStack(write_keys=[WRITE_KEY]) as server:
        yield server


def client_for(
    fake: FakeRudderStack, *, key: str = WRITE_KEY, **settings: object
) -> RudderStackClient:
    values: dict[str, object] = {"url": fake.url, "write_key": key, **settings}
    return RudderStackClient(
        DestinationSettings(**values),  # type: ignore[arg-type]
        backoff=Backoff(initial=0.01, cap=0.05, retry_after_cap=0.05),
    )


def test_calls_arrive_in_order_gzipped_and_pass_the_strict_checks(
    fake: FakeRudderStack,
) -> None:
    calls = encoded(1234)

    with client_for(fake, max_calls=500) as client:
        result = client.deliver(calls)

    assert result.delivered == 1234
    assert fake.message_ids() == [call.message_id for call in calls]
    assert fake.statuses() == [200, 200, 200]
    assert all(record.gzip for record in fake.requests)


def test_exact_decimals_arrive_with_their_digits(fake: FakeRudderStack) -> None:
    call = make_call(1, balance=Decimal("12345678901234567890.123456789"))

    with client_for(fake) as client:
        client.deliver([EncodedCall.of(call)])

    (received,) = fake.calls
    traits = received.exact_payload()["traits"]
    assert traits["balance"] == Decimal("12345678901234567890.123456789")
    assert str(traits["mrr"]) == "4.10"


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_failing_answers_are_retried_until_stored(
    fake: FakeRudderStack, status: int
) -> None:
    fake.fail_next(3, status, retry_after="1")

    with client_for(fake) as client:
        result = client.deliver(encoded(10))

    assert result.delivered == 10
    assert result.retries == 3
    assert fake.statuses() == [status, status, status, 200]
    assert len(set(fake.message_ids())) == 10


def test_dropped_connections_are_retried(fake: FakeRudderStack) -> None:
    fake.drop_next(2)

    with client_for(fake) as client:
        result = client.deliver(encoded(5))

    assert result.delivered == 5
    assert fake.statuses() == [None, None, 200]
    assert client.stats.errors_by_status == {"connection": 2}


def test_a_stalled_request_times_out_and_is_resent(fake: FakeRudderStack) -> None:
    fake.stall_next(1, 3.0)

    with client_for(fake, timeout=0.3) as client:
        result = client.deliver(encoded(5))

    assert result.delivered == 5
    assert fake.message_ids() == [f"m{n}" for n in range(5)]
    assert client.stats.errors_by_status == {"timeout": 1}


def test_bisection_against_the_fake_dead_letters_only_the_rejected(
    fake: FakeRudderStack,
) -> None:
    calls = encoded(37)
    fake.reject_message_ids({"m0", "m17", "m36"})

    with client_for(fake) as client:
        result = client.deliver(calls)

    assert sorted(c.message_id for c, _ in result.dead_letters) == ["m0", "m17", "m36"]
    assert fake.message_ids() == [
        c.message_id for c in calls if c.message_id not in {"m0", "m17", "m36"}
    ]


def test_unknown_write_key_pauses_until_the_key_is_accepted(
    fake: FakeRudderStack,
) -> None:
    with client_for(fake, key="wk-not-yet-known") as client:
        threading.Timer(0.3, fake.write_keys.add, ["wk-not-yet-known"]).start()
        result = client.deliver(encoded(3))

    assert result.delivered == 3
    assert fake.statuses()[0] == 401
    assert fake.statuses()[-1] == 200
    assert client.stats.paused is False


def test_segment_mode_gets_plain_json_within_its_limits() -> None:
    with FakeRudderStack(write_keys=[WRITE_KEY], segment=True) as segment:
        with client_for(segment, kind="segment") as client:
            result = client.deliver(encoded(600))

        assert result.delivered == 600
        assert not any(record.gzip for record in segment.requests)
        assert segment.dropped == []
