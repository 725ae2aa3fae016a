"""Batching: order kept, request and call limits never exceeded."""

from __future__ import annotations

import random
from datetime import datetime

import orjson
import pytest

from cdc_tracker.destination import (
    BatchLimits,
    EncodedCall,
    batching,
    make_batches,
    request_body,
)
from cdc_tracker.destination.encode import rfc3339_ms
from tests.destination.conftest import encoded, make_call

SENT_AT = rfc3339_ms(datetime(2026, 12, 4, 16, 42, 12))


def flat_ids(requests: list[list[EncodedCall]]) -> list[str]:
    return [call.message_id for batch in requests for call in batch]


def test_requests_hold_at_most_max_calls_and_keep_the_order() -> None:
    calls = encoded(1201)

    batches = make_batches(calls, BatchLimits(max_calls=500))

    assert [len(batch) for batch in batches.requests] == [500, 500, 201]
    assert flat_ids(batches.requests) == [call.message_id for call in calls]
    assert batches.oversize == []


@pytest.mark.parametrize("max_bytes", [3_000, 4_000, 7_777, 20_000])
def test_every_request_body_fits_max_bytes_and_none_could_take_one_more(
    max_bytes: int,
) -> None:
    calls = encoded(60)

    batches = make_batches(
        calls, BatchLimits(max_bytes=max_bytes, max_call_bytes=2_000)
    )

    for batch, following in zip(batches.requests, batches.requests[1:], strict=False):
        assert len(request_body(batch, SENT_AT)) <= max_bytes
        assert len(request_body([*batch, following[0]], SENT_AT)) > max_bytes
    assert len(request_body(batches.requests[-1], SENT_AT)) <= max_bytes
    assert flat_ids(batches.requests) == [call.message_id for call in calls]


@pytest.mark.parametrize("seed", range(8))
def test_calls_of_any_sizes_are_cut_where_the_next_would_not_fit(seed: int) -> None:
    rng = random.Random(seed)
    calls = [
        EncodedCall.of(make_call(n, notes="x" * rng.choice([0, 9, 300, 1_200, 4_500])))
        for n in range(rng.randint(1, 400))
    ]
    limits = BatchLimits(
        max_calls=rng.choice([1, 7, 100, 500]),
        max_bytes=rng.choice([9_500, 20_000, 64_000, 475_000]),
        max_call_bytes=9_400,
    )

    batches = make_batches(calls, limits)

    assert batches.oversize == []
    for batch, following in zip(batches.requests, batches.requests[1:], strict=False):
        full = len(batch) == limits.max_calls
        assert (
            full
            or len(request_body([*batch, following[0]], SENT_AT)) > limits.max_bytes
        )
    for batch in batches.requests:
        assert len(batch) <= limits.max_calls
        assert len(batch) == 1 or len(request_body(batch, SENT_AT)) <= limits.max_bytes
    assert flat_ids(batches.requests) == [call.message_id for call in calls]
    # The same cuts as the call-by-call path, which takes over with an oversize call.
    assert batches == batching._batches_call_by_call(calls, limits)


def test_a_call_that_exactly_fills_the_request_is_sent_alone() -> None:
    call = encoded(1)[0]
    exact = len(request_body([call], SENT_AT))

    batches = make_batches([call, call], BatchLimits(max_bytes=exact))

    assert [len(batch) for batch in batches.requests] == [1, 1]


def test_oversize_call_is_dead_lettered_with_its_size_and_never_batched() -> None:
    huge = EncodedCall.of(make_call(7, notes="x" * 40_000))
    calls = [*encoded(2), huge, *encoded(2, start=10)]

    batches = make_batches(calls, BatchLimits())

    size = len(huge.body) + len(b',"sentAt":"2026-12-04T16:42:12.123Z"')
    assert batches.oversize == [
        (huge, f"over the 32000-byte per-call limit: the call is {size} bytes")
    ]
    assert flat_ids(batches.requests) == ["m0", "m1", "m10", "m11"]


def test_request_body_is_a_batch_envelope_with_sent_at_on_every_call() -> None:
    calls = encoded(3)

    body = orjson.loads(request_body(calls, SENT_AT))

    assert [call["messageId"] for call in body["batch"]] == ["m0", "m1", "m2"]
    assert {call["sentAt"] for call in body["batch"]} == {SENT_AT}


def test_no_calls_make_no_requests() -> None:
    assert make_batches([], BatchLimits()).requests == []


@pytest.mark.parametrize("count", [0, 1, 2, 500])
def test_request_bodies_joined_in_c_are_the_python_join(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = encoded(count)

    assert batching._join_bodies is not None, "the C writer is not built"
    joined = request_body(calls, SENT_AT)
    monkeypatch.setattr(batching, "_join_bodies", None)

    assert joined == request_body(calls, SENT_AT)
    assert [call["sentAt"] for call in orjson.loads(joined)["batch"]] == [
        SENT_AT
    ] * count


def test_an_empty_object_call_takes_the_python_join() -> None:
    call = encoded(1)[0]
    call.body = b"{}"

    body = request_body([call, *encoded(1)], SENT_AT)

    assert orjson.loads(body)["batch"][0] == {"sentAt": SENT_AT}
