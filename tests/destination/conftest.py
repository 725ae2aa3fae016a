"""Shared helpers: calls to ship, and a recording stand-in for the data plane."""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from cdc_tracker.destination import (
    Backoff,
    DestinationSettings,
    EncodedCall,
    RudderStackClient,
)
from cdc_tracker.model import Call, Lsn

WRITE_KEY = "wk-s3cr3t-2Lq9"
URL = "http://127.0.0.1:9/"
MAX_REQUESTS = 2_000


def make_call(n: int, **traits: Any) -> Call:
    """An identify call for user ``u{n}`` with a few traits, message id ``m{n}``."""
    values: dict[str, Any] = {
        "plan": "pro",
        "seats": n,
        "mrr": Decimal("4.10"),
        "signed_up": datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        **traits,
    }
    return Call(
        message_id=f"m{n}",
        user_id=f"u{n}",
        payload={
            "type": "identify",
            "messageId": f"m{n}",
            "userId": f"u{n}",
            "traits": values,
            "context": {"traits": values, "library": {"name": "cdc-tracker"}},
            "timestamp": "2026-01-02T03:04:05.123Z",
        },
        rule="users",
        commit_lsn=Lsn(0x16_0000_0000 + n),
        ordinal=n,
    )


def encoded(count: int, start: int = 0) -> list[EncodedCall]:
    return [EncodedCall.of(make_call(n)) for n in range(start, start + count)]


def decode_body(request: httpx.Request) -> list[dict[str, Any]]:
    """The calls of a recorded request, gunzipped when it says so."""
    content = request.content
    if request.headers.get("Content-Encoding") == "gzip":
        content = gzip.decompress(content)
    batch: list[dict[str, Any]] = orjson.loads(content)["batch"]
    return batch


Answer = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakePlane:
    """Answers each request with the next scripted answer, then with 200.

    ``refuse`` names message ids that make any batch holding one get ``refuse_status``.
    """

    script: list[Answer | int] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    refuse_status: int = 400
    requests: list[httpx.Request] = field(default_factory=list)
    stored: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        # A client retrying forever should fail the test, not hang it.
        assert len(self.requests) <= MAX_REQUESTS, "the client never gave up"
        calls = decode_body(request)
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, int):
                return httpx.Response(answer, text="scripted\n")
            return answer(request)
        if any(call["messageId"] in self.refuse for call in calls):
            return httpx.Response(self.refuse_status, text="refused\n")
        self.stored.extend(calls)
        return httpx.Response(200, text="OK")

    @property
    def stored_ids(self) -> list[str]:
        return [call["messageId"] for call in self.stored]


def ticking_clock() -> Callable[[], datetime]:
    """A clock that moves 1.5 s forward each time it is read."""
    start = datetime(2026, 12, 4, 16, 42, 12, 123000, tzinfo=UTC)
    ticks = itertools.count()
    return lambda: start + timedelta(seconds=1.5 * next(ticks))


@dataclass
class Harness:
    plane: FakePlane
    client: RudderStackClient
    sleeps: list[float]


@pytest.fixture
def harness() -> Iterator[Harness]:
    plane = FakePlane()
    sleeps: list[float] = []
    settings = DestinationSettings(url=URL, write_key=WRITE_KEY)
    client = RudderStackClient(
        settings,
        transport=httpx.MockTransport(plane),
        backoff=Backoff(initial=0.01, cap=0.1),
        sleep=sleeps.append,
        now=ticking_clock(),
    )
    yield Harness(plane, client, sleeps)
    client.close()
