"""One request: what goes on the wire, and how answers become our errors."""

from __future__ import annotations

import base64
import gzip
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import orjson
import pytest

from cdc_tracker import __version__
from cdc_tracker.destination import DestinationSettings, EncodedCall, RudderStackClient
from cdc_tracker.errors import (
    DeliveryError,
    DestinationAuthError,
    PermanentDelivery,
    RetryableDelivery,
)
from tests.destination.conftest import URL, WRITE_KEY, Harness, encoded, make_call


def client_answering(
    answer: Callable[[httpx.Request], httpx.Response], **settings: object
) -> RudderStackClient:
    values: dict[str, object] = {"url": URL, "write_key": WRITE_KEY, **settings}
    return RudderStackClient(
        DestinationSettings(**values),  # type: ignore[arg-type]
        transport=httpx.MockTransport(answer),
    )


def test_request_carries_basic_auth_gzip_and_our_user_agent(harness: Harness) -> None:
    harness.client.post(encoded(2))

    request = harness.plane.requests[0]
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    assert request.method == "POST"
    assert str(request.url) == "http://127.0.0.1:9/v1/batch"
    assert request.headers["Authorization"] == f"Basic {token}"
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"cdc-tracker/{__version__}"


def test_gzip_body_decodes_to_json_with_exact_decimals(harness: Harness) -> None:
    call = make_call(1, balance=Decimal("12345678901234567890.123456789"))

    harness.client.post([EncodedCall.of(call)])

    raw = gzip.decompress(harness.plane.requests[0].content)
    assert b'"balance":12345678901234567890.123456789' in raw
    assert b'"mrr":4.10' in raw
    stored = orjson.loads(raw)["batch"][0]
    assert stored["sentAt"] == "2026-12-04T16:42:12.123Z"
    assert stored["traits"]["signed_up"] == "2026-01-02T03:04:05.123456Z"


def test_segment_body_is_plain_json_without_content_encoding() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with client_answering(answer, kind="segment") as client:
        client.post(encoded(1))

    assert "Content-Encoding" not in seen[0].headers
    assert orjson.loads(seen[0].content)["batch"][0]["messageId"] == "m0"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (200, None),
        (204, None),
        (401, DestinationAuthError),
        (403, DestinationAuthError),
        (404, DestinationAuthError),
        (400, PermanentDelivery),
        (405, PermanentDelivery),
        (413, PermanentDelivery),
        (422, PermanentDelivery),
        (301, PermanentDelivery),
        (408, RetryableDelivery),
        (429, RetryableDelivery),
        (500, RetryableDelivery),
        (502, RetryableDelivery),
        (503, RetryableDelivery),
        (504, RetryableDelivery),
    ],
)
def test_status_maps_to_our_error(
    status: int, error: type[DeliveryError] | None
) -> None:
    # The body says "ok" whatever the status: only the status may decide.
    with client_answering(lambda _: httpx.Response(status, text="ok\n")) as client:
        if error is None:
            client.post(encoded(3))
            return
        with pytest.raises(error) as caught:
            client.post(encoded(3))

    assert type(caught.value) is error
    assert str(caught.value).startswith(
        f"127.0.0.1 answered {status} to a request of 3 calls"
    )
    assert getattr(caught.value, "status", status) == status


def raiser(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc

    return answer


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (httpx.ConnectTimeout("connect timed out"), "did not answer within 10.0 s"),
        (httpx.ReadTimeout("read timed out"), "did not answer within 10.0 s"),
        (httpx.WriteTimeout("write timed out"), "did not answer within 10.0 s"),
        (httpx.PoolTimeout("pool timed out"), "did not answer within 10.0 s"),
        (httpx.ConnectError("connection refused"), "(ConnectError)"),
        (httpx.ReadError("connection reset"), "(ReadError)"),
        (httpx.WriteError("broken pipe"), "(WriteError)"),
        (
            httpx.RemoteProtocolError(
                "Server disconnected without sending a response."
            ),
            "(RemoteProtocolError)",
        ),
        (httpx.ProxyError("proxy refused"), "(ProxyError)"),
    ],
)
def test_httpx_exception_maps_to_retryable_delivery(exc: Exception, words: str) -> None:
    with (
        client_answering(raiser(exc)) as client,
        pytest.raises(RetryableDelivery) as caught,
    ):
        client.post(encoded(4))

    assert words in str(caught.value)
    assert "4 calls" in str(caught.value)
    assert caught.value.__cause__ is exc
    assert caught.value.retry_after is None


def test_retry_after_seconds_is_passed_on() -> None:
    answer = httpx.Response(429, headers={"Retry-After": "17"})

    with (
        client_answering(lambda _: answer) as client,
        pytest.raises(RetryableDelivery) as caught,
    ):
        client.post(encoded(1))

    assert caught.value.retry_after == 17.0
    assert str(caught.value).endswith("to a request of 1 call")


def test_retry_after_http_date_is_passed_on_as_seconds_from_now() -> None:
    later = datetime.now(UTC).timestamp() + 120
    header = datetime.fromtimestamp(later, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    answer = httpx.Response(503, headers={"Retry-After": header})

    with (
        client_answering(lambda _: answer) as client,
        pytest.raises(RetryableDelivery) as caught,
    ):
        client.post(encoded(1))

    assert caught.value.retry_after == pytest.approx(120, abs=2)


def test_error_messages_carry_neither_the_key_nor_payload_values() -> None:
    call = make_call(1, email="alice@example.com")

    with (
        client_answering(lambda _: httpx.Response(400)) as client,
        pytest.raises(PermanentDelivery) as caught,
    ):
        client.post([EncodedCall.of(call)])

    assert WRITE_KEY not in str(caught.value)
    assert "alice" not in str(caught.value)


def test_stats_count_requests_calls_bytes_and_errors(harness: Harness) -> None:
    harness.plane.script = [503]

    with pytest.raises(RetryableDelivery):
        harness.client.post(encoded(2))
    harness.client.post(encoded(3))

    stats = harness.client.stats.snapshot()
    assert (stats.requests, stats.calls_sent) == (2, 5)
    assert stats.bytes_sent == sum(len(r.content) for r in harness.plane.requests)
    assert stats.errors_by_status == {"503": 1}
