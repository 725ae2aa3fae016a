"""The fake RudderStack answers as the wire contract says, in the contract's order.

Driven with raw httpx requests (and a raw socket for keep-alive); every test checks
the status and the body.
"""

from __future__ import annotations

import gzip
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from cdc_tracker.testing.rudderstack import FakeRudderStack, ReceivedCall

KEY = "test-write-key"
STAMP = "2024-05-01T12:00:00.123Z"


def a_call(n: int, **fields: Any) -> dict[str, Any]:
    """A track call the strict fake accepts; ``fields`` override or add keys."""
    call: dict[str, Any] = {
        "type": "track",
        "event": "Order Placed",
        "userId": f"u{n}",
        "messageId": f"m{n}",
        "timestamp": STAMP,
        "originalTimestamp": STAMP,
        "sentAt": STAMP,
        "properties": {"n": n},
        "context": {"library": {"name": "cdc-tracker", "version": "0.1.0"}},
        "integrations": {"All": True},
    }
    call.update(fields)
    return {key: value for key, value in call.items() if value is not _ABSENT}


_ABSENT = object()


def batch_of(*calls: dict[str, Any]) -> bytes:
    return orjson.dumps({"batch": list(calls)})


def http_client(fake: FakeRudderStack) -> httpx.Client:
    # Plain HTTP on loopback: skipping the TLS context saves ~50 ms per client.
    return httpx.Client(base_url=fake.url, auth=(KEY, ""), timeout=5, verify=False)


def post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, verify=False, timeout=5, **kwargs)


@pytest.fixture
def fake() -> Iterator[FakeRudderStack]:
    with FakeRudderStack() as server:
        yield server


@pytest.fixture
def client(fake: FakeRudderStack) -> Iterator[httpx.Client]:
    with http_client(fake) as http:
        yield http


def test_valid_batch_is_stored_in_order_and_answered_ok(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    response = client.post("/v1/batch", content=batch_of(a_call(1), a_call(2)))

    assert (response.status_code, response.text) == (200, "ok")
    assert fake.message_ids() == ["m1", "m2"]
    first = fake.calls[0]
    assert (first.type, first.user_id, first.event) == ("track", "u1", "Order Placed")
    [record] = fake.requests
    assert (record.status, record.n_calls, record.write_key) == (200, 2, KEY)
    assert record.body_bytes == len(batch_of(a_call(1), a_call(2)))
    assert first.request_no == record.request_no


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer dGVzdC13cml0ZS1rZXk6",
        "Basic not-base64!",
        "Basic OnNlY3JldA==",  # ":secret", an empty username
        "Basic dGVzdC13cml0ZS1rZXk=",  # "test-write-key" without the colon
    ],
)
def test_missing_or_malformed_basic_auth_is_401_failed_to_read(
    fake: FakeRudderStack, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = post(f"{fake.url}/v1/batch", content=b"garbage", headers=headers)

    assert response.status_code == 401
    assert response.text == "failed to read writekey from header\n"


def test_unknown_key_is_401_even_when_the_body_is_garbage(
    fake: FakeRudderStack,
) -> None:
    response = post(f"{fake.url}/v1/batch", content=b"\x00", auth=("nope", ""))

    assert (response.status_code, response.text) == (401, "invalid write key\n")
    assert fake.requests[0].write_key == "nope"


def test_revoked_key_is_refused_until_restored(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    fake.write_keys.discard(KEY)
    refused = client.post("/v1/batch", content=batch_of(a_call(1)))
    fake.write_keys.add(KEY)
    accepted = client.post("/v1/batch", content=batch_of(a_call(1)))

    assert (refused.status_code, refused.text) == (401, "invalid write key\n")
    assert (accepted.status_code, accepted.text) == (200, "ok")


def test_disabled_source_is_404_after_auth_and_before_the_body(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    fake.disable_source()
    disabled = client.post("/v1/batch", content=b"not json")
    bad_key = client.post("/v1/batch", content=b"not json", auth=("nope", ""))
    fake.disable_source(False)
    enabled = client.post("/v1/batch", content=batch_of(a_call(1)))

    assert (disabled.status_code, disabled.text) == (404, "source is disabled\n")
    assert (bad_key.status_code, bad_key.text) == (401, "invalid write key\n")
    assert (enabled.status_code, enabled.text) == (200, "ok")


def test_corrupt_gzip_is_500_failed_to_read_body(client: httpx.Client) -> None:
    corrupt = gzip.compress(batch_of(a_call(1)))[:-6]

    response = client.post(
        "/v1/batch", content=corrupt, headers={"Content-Encoding": "gzip"}
    )

    assert response.status_code == 500
    assert response.text == "failed to read body from request\n"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", gzip.compress(batch_of(a_call(1))), b'{"batch": [NaN]}'],
    ids=["broken", "empty", "gzip-without-header", "nan"],
)
def test_body_that_is_not_json_is_400_invalid_json(
    fake: FakeRudderStack, client: httpx.Client, body: bytes
) -> None:
    response = client.post("/v1/batch", content=body)

    assert (response.status_code, response.text) == (400, "invalid json\n")
    assert fake.calls == []


def test_element_that_is_not_an_object_is_400_before_the_user_check(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    no_user = a_call(1, userId=_ABSENT)

    response = client.post("/v1/batch", content=batch_of(no_user, 5))  # type: ignore[arg-type]

    assert response.status_code == 400
    assert response.text == "event is not a valid rudder event\n"
    assert fake.calls == []


@pytest.mark.parametrize("user_id", [_ABSENT, "", "  \t", None])
def test_one_call_without_a_user_rejects_the_whole_request(
    fake: FakeRudderStack, client: httpx.Client, user_id: Any
) -> None:
    body = batch_of(a_call(1), a_call(2, userId=user_id, anonymousId=" "))

    response = client.post("/v1/batch", content=body)

    assert response.status_code == 400
    assert response.text == "request neither has anonymousId nor userId\n"
    assert fake.calls == []


def test_anonymous_id_alone_names_the_user(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    call = a_call(1, userId=_ABSENT, anonymousId="anon-1")

    response = client.post("/v1/batch", content=batch_of(call))

    assert (response.status_code, response.text) == (200, "ok")
    assert fake.calls[0].anonymous_id == "anon-1"


def test_rate_limit_counts_calls_and_answers_429_without_retry_after() -> None:
    with (
        FakeRudderStack(rate_limit_calls=3) as fake,
        http_client(fake) as client,
    ):
        first = client.post("/v1/batch", content=batch_of(a_call(1), a_call(2)))
        second = client.post("/v1/batch", content=batch_of(a_call(3), a_call(4)))
        third = client.post("/v1/batch", content=batch_of(a_call(5)))

    assert (first.status_code, first.text) == (200, "ok")
    assert (second.status_code, second.text) == (429, "max requests limit reached\n")
    assert "retry-after" not in second.headers
    assert (third.status_code, third.text) == (200, "ok")
    assert fake.message_ids() == ["m1", "m2", "m5"]


def test_rate_limit_comes_before_the_size_limit() -> None:
    with (
        FakeRudderStack(rate_limit_calls=1, max_body_bytes=100) as fake,
        http_client(fake) as client,
    ):
        response = client.post("/v1/batch", content=batch_of(a_call(1), a_call(2)))

    assert (response.status_code, response.text) == (
        429,
        "max requests limit reached\n",
    )


def padded_batch(size: int) -> bytes:
    """A valid one-call batch of exactly ``size`` bytes."""
    bare = batch_of(a_call(1, properties={"pad": ""}))
    return batch_of(a_call(1, properties={"pad": "x" * (size - len(bare))}))


def test_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_413(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    at_limit = client.post("/v1/batch", content=padded_batch(4_096_000))
    over = client.post("/v1/batch", content=padded_batch(4_096_001))

    assert (at_limit.status_code, at_limit.text) == (200, "ok")
    assert (over.status_code, over.text) == (413, "request size exceeds max limit\n")
    assert len(fake.calls) == 1


def test_size_limit_applies_to_the_gunzipped_body(client: httpx.Client) -> None:
    body = gzip.compress(padded_batch(4_096_001))
    assert len(body) < 100_000

    response = client.post(
        "/v1/batch", content=body, headers={"Content-Encoding": "gzip"}
    )

    assert (response.status_code, response.text) == (
        413,
        "request size exceeds max limit\n",
    )


def test_user_check_comes_before_the_size_limit() -> None:
    with (
        FakeRudderStack(max_body_bytes=100) as fake,
        http_client(fake) as client,
    ):
        body = batch_of(a_call(1, userId=_ABSENT))
        response = client.post("/v1/batch", content=body)

    assert response.status_code == 400
    assert response.text == "request neither has anonymousId nor userId\n"


@pytest.mark.parametrize("body", [b'{"batch": []}', b"{}", b'{"batch": null}', b"[]"])
def test_empty_or_missing_batch_is_400_empty_batch_payload(
    client: httpx.Client, body: bytes
) -> None:
    response = client.post("/v1/batch", content=body)

    assert (response.status_code, response.text) == (400, "empty batch payload\n")


BAD_TIME = "must be RFC 3339 UTC with milliseconds, like 2024-05-01T12:00:00.000Z"
STRICT_CASES = [
    ({"type": _ABSENT}, "type: must be 'identify' or 'track'"),
    ({"type": "page"}, "type: must be 'identify' or 'track'"),
    ({"event": _ABSENT}, "event: must be a non-empty string on a track call"),
    ({"event": " "}, "event: must be a non-empty string on a track call"),
    ({"messageId": _ABSENT}, "messageId: must be a non-empty string"),
    ({"messageId": ""}, "messageId: must be a non-empty string"),
    ({"messageId": "m" * 100}, "messageId: 100 characters, must be under 100"),
    ({"userId": 42}, "userId: must be a string"),
    ({"integrations": None}, "integrations: must be absent or an object of booleans"),
    ({"integrations": {"All": "yes"}}, "integrations.All: must be a boolean"),
    ({"context": {"sources": {"job_id": "x"}}}, "context.sources: must not be set"),
    ({"properties": [1]}, "properties: must be an object"),
    (
        {"timestamp": "2024-05-01T12:00:00Z"},
        "timestamp: " + BAD_TIME,
    ),
    (
        {"timestamp": "2024-05-01T12:00:00.000+00:00"},
        "timestamp: " + BAD_TIME,
    ),
    (
        {"sentAt": 1714564800000},
        "sentAt: " + BAD_TIME,
    ),
    (
        {"originalTimestamp": "2024-13-01T12:00:00.000Z"},
        "originalTimestamp: " + BAD_TIME,
    ),
]


@pytest.mark.parametrize(("fields", "problem"), STRICT_CASES)
def test_strict_mode_refuses_a_bad_field_naming_call_and_field(
    fake: FakeRudderStack, client: httpx.Client, fields: dict[str, Any], problem: str
) -> None:
    response = client.post(
        "/v1/batch", content=batch_of(a_call(1), a_call(2, **fields))
    )

    assert (response.status_code, response.text) == (
        400,
        f"strict: batch[1].{problem}\n",
    )
    assert fake.calls == []


@pytest.mark.parametrize(("fields", "problem"), STRICT_CASES)
def test_lenient_mode_accepts_what_strict_mode_refuses(
    fields: dict[str, Any], problem: str
) -> None:
    with (
        FakeRudderStack(strict=False) as fake,
        http_client(fake) as client,
    ):
        response = client.post("/v1/batch", content=batch_of(a_call(1, **fields)))

    assert (response.status_code, response.text) == (200, "ok")
    assert len(fake.calls) == 1


def test_strict_mode_accepts_an_identify_and_a_99_character_message_id(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    identify = a_call(1, type="identify", event=_ABSENT, traits={"plan": "pro"})
    long_id = a_call(2, messageId="m" * 99)

    response = client.post("/v1/batch", content=batch_of(identify, long_id))

    assert (response.status_code, response.text) == (200, "ok")
    assert [call.type for call in fake.calls] == ["identify", "track"]


def test_gzip_body_is_accepted_and_recorded_as_gzip(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    body = gzip.compress(batch_of(a_call(1)))

    response = client.post(
        "/v1/batch", content=body, headers={"Content-Encoding": "gzip"}
    )

    assert (response.status_code, response.text) == (200, "ok")
    [record] = fake.requests
    assert record.gzip
    assert record.body_bytes == len(batch_of(a_call(1)))


def test_gzip_required_refuses_plain_bodies_and_refused_refuses_gzip() -> None:
    plain, packed = batch_of(a_call(1)), gzip.compress(batch_of(a_call(1)))
    gzip_header = {"Content-Encoding": "gzip"}
    with FakeRudderStack(gzip="require") as requiring:
        refused = post(f"{requiring.url}/v1/batch", content=plain, auth=(KEY, ""))
        taken = post(
            f"{requiring.url}/v1/batch",
            content=packed,
            auth=(KEY, ""),
            headers=gzip_header,
        )
    with FakeRudderStack(gzip="refuse") as refusing:
        blocked = post(
            f"{refusing.url}/v1/batch",
            content=packed,
            auth=(KEY, ""),
            headers=gzip_header,
        )

    assert (refused.status_code, refused.text) == (
        415,
        "fake requires Content-Encoding: gzip\n",
    )
    assert (taken.status_code, taken.text) == (200, "ok")
    assert (blocked.status_code, blocked.text) == (
        415,
        "fake refuses Content-Encoding: gzip\n",
    )


@pytest.fixture
def segment() -> Iterator[tuple[FakeRudderStack, httpx.Client]]:
    with (
        FakeRudderStack(segment=True) as fake,
        http_client(fake) as client,
    ):
        yield fake, client


def test_segment_refuses_a_call_over_32_kb(
    segment: tuple[FakeRudderStack, httpx.Client],
) -> None:
    fake, client = segment
    big = a_call(2, properties={"pad": "x" * 33_000})

    response = client.post("/v1/batch", content=batch_of(a_call(1), big))

    assert response.status_code == 400
    assert response.text == f"batch[1] is {len(orjson.dumps(big))} bytes, over 32 KB\n"
    assert fake.calls == []


def test_segment_refuses_a_request_over_500_kb(
    segment: tuple[FakeRudderStack, httpx.Client],
) -> None:
    _, client = segment
    calls = [a_call(n, properties={"pad": "x" * 30_000}) for n in range(18)]
    body = batch_of(*calls)

    response = client.post("/v1/batch", content=body)

    assert (response.status_code, response.text) == (
        400,
        f"request is {len(body)} bytes, over 500 KB\n",
    )


def test_segment_answers_200_but_drops_more_than_2500_calls(
    segment: tuple[FakeRudderStack, httpx.Client],
) -> None:
    fake, client = segment
    small = [
        {"type": "track", "event": "E", "userId": "u", "messageId": f"{n}"}
        for n in range(2501)
    ]

    kept = client.post("/v1/batch", content=orjson.dumps({"batch": small[:2500]}))
    dropped = client.post("/v1/batch", content=orjson.dumps({"batch": small}))

    assert (kept.status_code, kept.text) == (200, "ok")
    assert (dropped.status_code, dropped.text) == (200, "ok")
    assert len(fake.calls) == 2500
    assert len(fake.dropped) == 2501
    assert fake.requests[1].dropped == 2501


def test_segment_rate_limit_says_retry_after(
    segment: tuple[FakeRudderStack, httpx.Client],
) -> None:
    fake, client = segment
    fake.rate_limit_calls = 1

    client.post("/v1/batch", content=batch_of(a_call(1)))
    response = client.post("/v1/batch", content=batch_of(a_call(2)))

    assert (response.status_code, response.text) == (
        429,
        "max requests limit reached\n",
    )
    assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize("route", ["identify", "track"])
def test_single_call_routes_are_wrapped_into_a_batch_of_one(
    fake: FakeRudderStack, client: httpx.Client, route: str
) -> None:
    call = a_call(1, type=_ABSENT, traits={"plan": "pro"})

    response = client.post(f"/v1/{route}", content=orjson.dumps(call))

    assert (response.status_code, response.text) == (200, "ok")
    [received] = fake.calls
    assert received.type == route
    assert received.raw == orjson.dumps(call)


def test_health_answers_up_and_other_routes_are_refused(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    health = client.get("/health")
    wrong_method = client.get("/v1/batch")
    unknown = client.post("/v1/page", content=batch_of(a_call(1)))

    assert health.status_code == 200
    assert health.json() == {"server": "UP", "db": "UP"}
    assert (wrong_method.status_code, wrong_method.text) == (
        405,
        "method not allowed\n",
    )
    assert (unknown.status_code, unknown.text) == (404, "404 page not found\n")


def test_exact_digits_of_numbers_are_kept(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    text = (
        b'{"batch": [ {"type":"track","event":"E","userId":"u","messageId":"m",'
        b'"properties":{"mrr":4.10,"big":123456789012345678901234567890.000001}} ]}'
    )

    response = client.post("/v1/batch", content=text)

    assert (response.status_code, response.text) == (200, "ok")
    [call] = fake.calls
    assert b'"mrr":4.10' in call.raw
    assert call.exact_payload()["properties"] == {
        "mrr": Decimal("4.10"),
        "big": Decimal("123456789012345678901234567890.000001"),
    }


def test_fail_next_answers_the_status_then_recovers(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    fake.fail_next(2)

    answers = [client.post("/v1/batch", content=batch_of(a_call(n))) for n in range(3)]

    assert [(r.status_code, r.text) for r in answers] == [
        (503, "service unavailable\n"),
        (503, "service unavailable\n"),
        (200, "ok"),
    ]
    assert fake.message_ids() == ["m2"]
    assert [r.fault for r in fake.requests] == ["fail", "fail", None]


def test_fail_next_with_429_and_retry_after(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    fake.fail_next(1, status=429, retry_after="7")

    response = client.post("/v1/batch", content=batch_of(a_call(1)))

    assert (response.status_code, response.text) == (
        429,
        "max requests limit reached\n",
    )
    assert response.headers["retry-after"] == "7"


def test_fail_for_answers_the_status_until_the_window_ends(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    fake.fail_for(0.3, status=502)

    during = client.post("/v1/batch", content=batch_of(a_call(1)))
    time.sleep(0.35)
    after = client.post("/v1/batch", content=batch_of(a_call(2)))

    assert (during.status_code, during.text) == (502, "bad gateway\n")
    assert (after.status_code, after.text) == (200, "ok")
    assert fake.message_ids() == ["m2"]


def test_faults_are_served_in_the_order_they_were_scheduled(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    fake.fail_next(1, status=500)
    fake.fail_next(1, status=504)

    answers = [client.post("/v1/batch", content=batch_of(a_call(n))) for n in range(3)]

    assert [(r.status_code, r.text) for r in answers] == [
        (500, "internal server error\n"),
        (504, "gateway timeout\n"),
        (200, "ok"),
    ]


def test_stalled_request_times_the_client_out_and_is_not_stored(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    fake.stall_next(1, seconds=0.5)

    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/batch", content=batch_of(a_call(1)), timeout=0.1)
    stalled = fake.wait_for_requests(1, timeout=2)[0]
    response = client.post("/v1/batch", content=batch_of(a_call(2)))

    assert (stalled.status, stalled.answer, stalled.fault) == (
        504,
        "gateway timeout\n",
        "stall",
    )
    assert (response.status_code, response.text) == (200, "ok")
    assert fake.message_ids() == ["m2"]


def test_dropped_connection_gets_no_answer_and_nothing_is_stored(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    fake.drop_next(1)

    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/v1/batch", content=batch_of(a_call(1)))
    response = client.post("/v1/batch", content=batch_of(a_call(2)))

    assert (response.status_code, response.text) == (200, "ok")
    assert fake.statuses() == [None, 200]
    assert fake.message_ids() == ["m2"]


def test_rejected_message_id_fails_any_batch_holding_it(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    fake.reject_message_ids({"m2"})

    whole = client.post("/v1/batch", content=batch_of(a_call(1), a_call(2), a_call(3)))
    half = client.post("/v1/batch", content=batch_of(a_call(1)))

    assert (whole.status_code, whole.text) == (
        400,
        "batch[1]: messageId 'm2' rejected by test\n",
    )
    assert (half.status_code, half.text) == (200, "ok")
    assert fake.message_ids() == ["m1"]


def test_reset_forgets_calls_and_clears_switches(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    client.post("/v1/batch", content=batch_of(a_call(1)))
    fake.disable_source()
    fake.fail_next(3)

    fake.reset()
    response = client.post("/v1/batch", content=batch_of(a_call(2)))

    assert (response.status_code, response.text) == (200, "ok")
    assert fake.message_ids() == ["m2"]
    assert len(fake.requests) == 1


def test_keep_alive_serves_many_requests_on_one_socket_even_after_a_401(
    fake: FakeRudderStack,
) -> None:
    port = int(fake.url.rsplit(":", 1)[1])
    body = batch_of(a_call(1))
    good = "Basic dGVzdC13cml0ZS1rZXk6"  # "test-write-key:"
    bad = "Basic bm9wZTo="  # "nope:"

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        answers = [
            _exchange(sock, reader, body, authorization)
            for authorization in (bad, good, good)
        ]
        reader.close()

    assert answers == [(401, b"invalid write key\n"), (200, b"ok"), (200, b"ok")]
    assert len(fake.calls) == 2


def _exchange(
    sock: socket.socket, reader: Any, body: bytes, authorization: str
) -> tuple[int, bytes]:
    head = (
        f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, reader.read(length)


def test_chunked_body_is_read_whole(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    body = batch_of(a_call(1), a_call(2))

    response = client.post("/v1/batch", content=iter([body[:10], body[10:]]))

    assert (response.status_code, response.text) == (200, "ok")
    assert fake.requests[0].headers["transfer-encoding"] == "chunked"
    assert fake.message_ids() == ["m1", "m2"]


def test_wait_for_calls_returns_once_calls_arrive(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    def send_later() -> None:
        time.sleep(0.1)
        client.post("/v1/batch", content=batch_of(a_call(1), a_call(2)))

    sender = threading.Thread(target=send_later)
    sender.start()
    calls = fake.wait_for_calls(2, timeout=5)
    sender.join()

    assert [call.message_id for call in calls] == ["m1", "m2"]


def test_wait_for_calls_says_what_arrived_on_timeout(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    fake.fail_next(1)
    client.post("/v1/batch", content=batch_of(a_call(1)))

    with pytest.raises(AssertionError) as failure:
        fake.wait_for_calls(1, timeout=0.1)

    assert str(failure.value) == (
        "waited 0.1 s for 1 calls: 0 calls accepted, 1 requests answered, "
        "last statuses [503]"
    )


def test_on_accept_sees_each_call_in_order_even_if_it_raises() -> None:
    seen: list[str] = []

    def note(call: ReceivedCall) -> None:
        seen.append(call.message_id)
        raise RuntimeError("callback bug")

    with (
        FakeRudderStack(on_accept=note) as fake,
        http_client(fake) as client,
    ):
        response = client.post("/v1/batch", content=batch_of(a_call(1), a_call(2)))

    assert (response.status_code, response.text) == (200, "ok")
    assert seen == ["m1", "m2"]


def test_stop_cuts_idle_keep_alive_connections(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    client.post("/v1/batch", content=batch_of(a_call(1)))

    fake.stop()

    with pytest.raises((httpx.RemoteProtocolError, httpx.ConnectError)):
        client.post("/v1/batch", content=batch_of(a_call(2)))
    assert fake.message_ids() == ["m1"]


def test_cli_prints_one_line_per_accepted_call() -> None:
    command = [sys.executable, "-m", "cdc_tracker.testing.rudderstack"]
    with subprocess.Popen(
        [*command, "--port", "0", "--write-key", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        try:
            assert process.stderr is not None
            assert process.stdout is not None
            banner = b""
            while b"Ctrl-C" not in banner:
                banner = process.stderr.readline()
                assert banner, "the receiver exited before serving"
            url = banner.split()[3].decode()
            response = post(url, content=batch_of(a_call(1)), auth=("demo", ""))
            # Checked before reading its line: no call taken, no line ever comes.
            assert (response.status_code, response.text) == (200, "ok")
            line = process.stdout.readline()
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=5)
        finally:
            process.kill()  # no-op once it exited; else the with block waits forever

    assert banner.endswith(b"(write key demo; Ctrl-C or SIGTERM stops)\n")
    assert orjson.loads(line) == ["track", "u1", "Order Placed", "m1"]
    assert code == 0


def test_cli_on_a_taken_port_says_so_and_exits_2(fake: FakeRudderStack) -> None:
    port = fake.url.rsplit(":", 1)[1]
    done = subprocess.run(
        [sys.executable, "-m", "cdc_tracker.testing.rudderstack", "--port", port],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"fake rudderstack: cannot listen on port {port}")
    assert "Traceback" not in done.stderr


def test_keep_alive_batches_flow_far_faster_than_the_shipper_needs(
    fake: FakeRudderStack, client: httpx.Client
) -> None:
    calls = [a_call(n, properties={"text": "x" * 200}) for n in range(500)]
    body = gzip.compress(batch_of(*calls), 1)
    gzip_header = {"Content-Encoding": "gzip"}

    started = time.perf_counter()
    answers = {
        client.post("/v1/batch", content=body, headers=gzip_header).status_code
        for _ in range(40)
    }
    elapsed = time.perf_counter() - started

    assert answers == {200}
    assert fake.accepted_count == 20_000
    # Expect ~0.2 s; a per-request stall (say Nagle's 40 ms) would blow this.
    assert elapsed < 1.5
