"""Delivery policy: retry, pause, split, bisect, dead-letter, stop."""

from __future__ import annotations

import gzip
import itertools
import logging
import threading
import time

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from cdc_tracker.destination import (
    Backoff,
    DestinationSettings,
    EncodedCall,
    RudderStackClient,
)
from tests.destination.conftest import (
    URL,
    WRITE_KEY,
    FakePlane,
    Harness,
    decode_body,
    encoded,
    make_call,
    ticking_clock,
)


def ids(calls: list[EncodedCall]) -> list[str]:
    return [call.message_id for call in calls]


def test_passing_failures_are_retried_until_every_call_is_delivered(
    harness: Harness,
) -> None:
    harness.plane.script = [503, 429, 502, 504, 500]
    calls = encoded(5)

    result = harness.client.deliver(calls)

    assert result.delivered == 5
    assert (result.requests, result.retries) == (6, 5)
    assert harness.plane.stored_ids == ids(calls)
    assert len(harness.sleeps) == 5
    assert all(0 <= delay <= 0.1 for delay in harness.sleeps)


def test_timeouts_and_dropped_connections_are_retried(harness: Harness) -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    def dropped(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected", request=request)

    harness.plane.script = [timeout, dropped]

    result = harness.client.deliver(encoded(3))

    assert result.delivered == 3
    assert harness.client.stats.errors_by_status == {"timeout": 1, "connection": 1}


def test_resent_calls_are_byte_identical_except_sent_at(harness: Harness) -> None:
    harness.plane.script = [500, 500]

    harness.client.deliver(encoded(4))

    bodies = [gzip.decompress(r.content) for r in harness.plane.requests]
    sent_ats = [{c["sentAt"] for c in orjson.loads(b)["batch"]} for b in bodies]
    assert all(len(stamps) == 1 for stamps in sent_ats)  # one sentAt per request
    stamps = [stamp for (stamp,) in sent_ats]
    assert len(set(stamps)) == 3  # a new sentAt every attempt
    unstamped = {
        b.replace(s.encode(), b"") for b, s in zip(bodies, stamps, strict=True)
    }
    assert len(unstamped) == 1  # otherwise the same bytes


def test_retry_after_is_honoured_as_the_delay(harness: Harness) -> None:
    harness.plane.script = [
        lambda _: httpx.Response(429, headers={"Retry-After": "7"}),
        lambda _: httpx.Response(
            503, headers={"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}
        ),
    ]

    harness.client.deliver(encoded(1))

    assert harness.sleeps[0] == 7.0
    assert 0 <= harness.sleeps[1] <= 0.1  # a past date falls back to backoff


def test_bisection_dead_letters_exactly_the_refused_calls_among_37(
    harness: Harness,
) -> None:
    calls = encoded(37)
    harness.plane.refuse = {"m3", "m20", "m21", "m36"}

    result = harness.client.deliver(calls)

    dead = {call.message_id for call, _ in result.dead_letters}
    assert dead == harness.plane.refuse
    assert all(
        reason == "refused by the destination with status 400: refused"
        for _, reason in result.dead_letters
    )
    expected = [i for i in ids(calls) if i not in harness.plane.refuse]
    assert harness.plane.stored_ids == expected  # order kept, nothing twice
    assert result.delivered == 33
    assert result.retries == 0


def test_413_on_a_batch_splits_it_in_halves_and_resends(harness: Harness) -> None:
    harness.plane.script = [413, 413]
    calls = encoded(8)

    result = harness.client.deliver(calls)

    sizes = [
        len(orjson.loads(gzip.decompress(r.content))["batch"])
        for r in harness.plane.requests
    ]
    assert sizes == [8, 4, 2, 2, 4]
    assert harness.plane.stored_ids == ids(calls)
    assert result.delivered == 8
    assert result.dead_letters == []


def test_413_on_a_single_call_dead_letters_it(harness: Harness) -> None:
    harness.plane.refuse, harness.plane.refuse_status = {"m1"}, 413

    result = harness.client.deliver(encoded(3))

    assert [(c.message_id, r) for c, r in result.dead_letters] == [
        ("m1", "refused by the destination with status 413: refused")
    ]
    assert harness.plane.stored_ids == ["m0", "m2"]


@pytest.mark.parametrize("status", [400, 422])
def test_400_on_a_single_call_dead_letters_it_with_the_status(
    harness: Harness, status: int
) -> None:
    harness.plane.script = [status]

    result = harness.client.deliver(encoded(1))

    assert result.delivered == 0
    assert result.dead_letters[0][1] == (
        f"refused by the destination with status {status}: scripted"
    )
    assert harness.client.stats.calls_dead_lettered == 1


def test_oversize_call_is_dead_lettered_and_never_sent(harness: Harness) -> None:
    huge = EncodedCall.of(make_call(99, notes="x" * 33_000))

    result = harness.client.deliver([*encoded(2), huge])

    assert result.dead_letters[0][0] is huge
    assert result.dead_letters[0][1].startswith("over the 32000-byte per-call limit:")
    assert harness.plane.stored_ids == ["m0", "m1"]
    assert len(harness.plane.requests) == 1


@pytest.mark.parametrize("status", [401, 403, 404, 405])
def test_auth_and_config_refusals_pause_and_drop_nothing(
    harness: Harness, status: int
) -> None:
    harness.plane.script = [status] * 6

    with capture_logs() as logs:
        result = harness.client.deliver(encoded(3))

    assert result.delivered == 3
    assert result.dead_letters == []
    assert harness.client.stats.paused is False
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1  # loud once, then rate-limited
    assert errors[0]["event"] == "destination refuses our settings, delivery paused"
    assert errors[0]["status"] == str(status)


def test_stats_show_paused_while_the_key_is_refused(harness: Harness) -> None:
    seen: list[bool] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(harness.client.stats.paused)
        return httpx.Response(401)

    harness.plane.script = [refuse, refuse]

    harness.client.deliver(encoded(1))

    assert seen == [False, True]
    assert harness.client.stats.paused is False


def test_recovery_is_logged_once_with_the_failures_before_it(harness: Harness) -> None:
    harness.plane.script = [500, 500, 500]

    with capture_logs() as logs:
        harness.client.deliver(encoded(2))

    warnings = [e for e in logs if e["log_level"] == "warning"]
    recovered = [e for e in logs if e["event"] == "destination recovered"]
    assert len(warnings) == 1  # later retries within the interval are held back
    assert warnings[0]["status"] == "500"
    assert warnings[0]["attempt"] == 1
    assert [e["failures"] for e in recovered] == [3]
    assert recovered[0]["log_level"] == "info"


def test_write_key_and_values_never_reach_the_logs(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.plane.script = [401, 503, 400, 400]
    calls = [EncodedCall.of(make_call(1, email="alice@example.com")), *encoded(2, 5)]

    with capture_logs() as logs, caplog.at_level(logging.DEBUG):
        harness.client.deliver(calls)

    text = repr(logs) + caplog.text
    assert "dead-lettered" in text  # the logs were captured at all
    assert WRITE_KEY not in text
    assert "alice" not in text


def test_stop_during_a_wait_returns_with_the_rest_pending() -> None:
    plane = FakePlane(script=[200] + [503] * 1000)
    settings = DestinationSettings(url=URL, write_key=WRITE_KEY, max_calls=2)
    stop = threading.Event()
    client = RudderStackClient(
        settings,
        transport=httpx.MockTransport(plane),
        backoff=Backoff(initial=30.0, cap=30.0, retry_after_cap=30.0),
        now=ticking_clock(),
    )
    threading.Timer(0.2, stop.set).start()
    calls = encoded(5)

    started = time.monotonic()
    result = client.deliver(calls, stop=stop)
    client.close()

    assert time.monotonic() - started < 5
    assert result.interrupted
    assert result.delivered == 2
    assert ids(result.pending) == ["m2", "m3", "m4"]
    assert result.dead_letters == []


def test_stop_set_before_delivery_still_sends_while_nothing_fails(
    harness: Harness,
) -> None:
    stop = threading.Event()
    stop.set()

    result = harness.client.deliver(encoded(3), stop=stop)

    assert (result.delivered, result.interrupted) == (3, False)


def test_calls_span_several_requests_in_order(harness: Harness) -> None:
    client = RudderStackClient(
        DestinationSettings(url=URL, write_key=WRITE_KEY, max_calls=10),
        transport=httpx.MockTransport(harness.plane),
    )
    calls = encoded(35)

    result = client.deliver(calls)
    client.close()

    assert result.requests == 4
    assert harness.plane.stored_ids == ids(calls)


def test_every_retry_is_logged_when_the_log_interval_is_zero() -> None:
    plane = FakePlane(script=[503, 429, 500])
    client = RudderStackClient(
        DestinationSettings(url=URL, write_key=WRITE_KEY),
        transport=httpx.MockTransport(plane),
        backoff=Backoff(initial=0.01, cap=0.01),
        sleep=lambda _: None,
        log_interval=0.0,
    )

    with capture_logs() as logs:
        client.deliver(encoded(1))
    client.close()

    warnings = [e for e in logs if e["event"] == "delivery failed, retrying"]
    assert [(e["status"], e["attempt"]) for e in warnings] == [
        ("503", 1),
        ("429", 2),
        ("500", 3),
    ]
    assert all(0 <= e["delay_s"] <= 0.01 for e in warnings)


def test_a_request_refused_to_its_last_call_is_waited_out_not_dead_lettered(
    harness: Harness,
) -> None:
    """A gateway answering 400 to everything for a while: the request is narrowed
    down once, then resent whole after growing waits until it is taken."""
    narrowing = 7  # 4 calls: 4, 2, 1, 1, 2, 1, 1
    harness.plane.script = [400] * (narrowing + 2)
    calls = encoded(4)

    with capture_logs() as logs:
        result = harness.client.deliver(calls)

    assert result.dead_letters == []
    assert result.delivered == 4
    assert harness.plane.stored_ids == ids(calls)
    assert result.requests == narrowing + 3  # then whole: 400, 400, 200
    assert len(harness.sleeps) == 3
    errors = [e["event"] for e in logs if e["log_level"] == "error"]
    assert errors == [
        "destination refused every call of a request, one by one: "
        "taken for its fault, resending them"
    ]


def _a_minute_per_look(plane: FakePlane) -> RudderStackClient:
    """A client patient for 300 s, whose clock moves a minute each time it is
    read; its waits take no time."""
    minutes = itertools.count()
    return RudderStackClient(
        DestinationSettings(url=URL, write_key=WRITE_KEY, refusal_patience=300),
        transport=httpx.MockTransport(plane),
        backoff=Backoff(initial=0.01, cap=0.1),
        sleep=lambda _: None,
        clock=lambda: 60.0 * next(minutes),
    )


def test_a_request_refused_past_the_patience_is_narrowed_and_dead_lettered() -> None:
    plane = FakePlane(refuse={"m0", "m1", "m2"})
    client = _a_minute_per_look(plane)

    with capture_logs() as logs:
        result = client.deliver(encoded(3))
    client.close()

    assert [(c.message_id, r) for c, r in result.dead_letters] == [
        (f"m{n}", "refused by the destination with status 400: refused")
        for n in range(3)
    ]
    errors = [e["event"] for e in logs if e["log_level"] == "error"]
    assert errors[:2] == [
        "destination refused every call of a request, one by one: "
        "taken for its fault, resending them",
        "destination still refuses every call of a request: "
        "dead-lettering those it refuses alone",
    ]
    assert sum(e["event"] == "call dead-lettered" for e in logs) == 3
    # Narrowed down twice (5 requests each); between, resent whole after the
    # waits begun at 0, 60, 120, 180 and 240 s; at 300 s the patience is out.
    assert len(plane.requests) == 5 + 5 + 5


def test_an_outage_of_400s_begun_while_narrowing_down_is_waited_out_too() -> None:
    """One call is refused for itself; while its request is narrowed down, the
    destination starts refusing everything. Only that call is dead-lettered:
    the calls refused after the last one taken are resent, not given up."""
    plane = FakePlane(refuse={"m39"})

    def take(request: httpx.Request) -> httpx.Response:
        plane.stored.extend(decode_body(request))
        return httpx.Response(200, text="OK")

    # The whole request, refused for m39; its first half taken; then 400 to all
    # while the second half is narrowed down (20 calls: 39 requests).
    plane.script = [400, take] + [400] * 39
    client = _a_minute_per_look(plane)

    result = client.deliver(encoded(40))
    client.close()

    assert [call.message_id for call, _ in result.dead_letters] == ["m39"]
    assert plane.stored_ids == [f"m{n}" for n in range(39)]
    assert result.delivered == 39


def test_stop_while_waiting_out_refusals_returns_the_request_pending() -> None:
    plane = FakePlane(refuse={"m0", "m1"})
    settings = DestinationSettings(url=URL, write_key=WRITE_KEY, max_calls=2)
    stop = threading.Event()
    client = RudderStackClient(
        settings,
        transport=httpx.MockTransport(plane),
        backoff=Backoff(initial=30.0, cap=30.0),
    )
    threading.Timer(0.2, stop.set).start()

    started = time.monotonic()
    result = client.deliver(encoded(4), stop=stop)
    client.close()

    assert time.monotonic() - started < 5
    assert ids(result.pending) == ["m0", "m1", "m2", "m3"]
    assert result.dead_letters == []
    assert result.delivered == 0


def test_stop_during_an_outage_after_a_refusal_keeps_the_refused_call_pending() -> None:
    # m0 is refused alone and m1 taken; the stop comes while [m2, m3] meet a 503.
    # m0 is neither delivered nor a dead letter yet: it must come back as pending.
    stop = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        sent = {call["messageId"] for call in decode_body(request)}
        if "m0" in sent:
            return httpx.Response(400, text="batch[0]: refused\n")
        if "m2" in sent:
            stop.set()
            return httpx.Response(503, text="unavailable\n")
        return httpx.Response(200, text="OK")

    client = RudderStackClient(
        DestinationSettings(url=URL, write_key=WRITE_KEY, max_calls=4),
        transport=httpx.MockTransport(answer),
        backoff=Backoff(initial=30.0, cap=30.0),
    )
    result = client.deliver(encoded(4), stop=stop)
    client.close()

    assert result.interrupted
    assert result.delivered == 1
    assert ids(result.pending) == ["m0", "m2", "m3"]
    assert result.dead_letters == []


def test_a_2xx_whose_body_does_not_decode_is_delivered_once() -> None:
    """The status decides: an answer saying gzip and sending plain text is no
    dropped connection, and the stored calls are not sent again."""
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        plain = httpx.ByteStream(b"OK")  # read as it arrives, as from a socket
        return httpx.Response(200, stream=plain, headers={"Content-Encoding": "gzip"})

    client = RudderStackClient(
        DestinationSettings(url=URL, write_key=WRITE_KEY),
        transport=httpx.MockTransport(answer),
        backoff=Backoff(initial=0.01, cap=0.01),
    )
    result = client.deliver(encoded(3))
    client.close()

    assert result.delivered == 3
    assert len(requests) == 1
    assert client.stats.errors_by_status == {}


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (httpx.Response(401, text="Invalid write key\n"), "Invalid write key"),
        (
            httpx.Response(307, headers={"Location": "https://elsewhere.example/"}),
            "redirected to https://elsewhere.example/",
        ),
    ],
)
def test_a_pause_says_what_the_destination_answered(
    answer: httpx.Response, said: str
) -> None:
    answers = iter([answer])
    client = RudderStackClient(
        DestinationSettings(url=URL, write_key=WRITE_KEY),
        transport=httpx.MockTransport(lambda _: next(answers, httpx.Response(200))),
        backoff=Backoff(initial=0.01, cap=0.01),
    )
    with capture_logs() as logs:
        assert client.deliver(encoded(1)).delivered == 1
    client.close()

    [paused] = [e for e in logs if e["log_level"] == "error"]
    assert paused["answer"] == said
