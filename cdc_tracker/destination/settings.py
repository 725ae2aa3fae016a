"""Where and how to ship calls: one validated settings object for the destination."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import httpx

from cdc_tracker.destination.batching import (
    ENVELOPE_BYTES,
    MAX_CALL_BYTES,
    SENT_AT_BYTES,
    BatchLimits,
)
from cdc_tracker.errors import ConfigError

Kind = Literal["rudderstack", "segment"]

# What each service accepts at most: (calls per request, bytes per request,
# bytes per call). Segment answers 200 yet drops calls past 2,500 in a batch.
_SERVICE_LIMITS: dict[str, tuple[int, int, int]] = {
    "rudderstack": (20_000, 4_096_000, 4_096_000),
    "segment": (2_500, 500_000, 32_768),
}


def smallest_batch_bytes(call_bytes: int = MAX_CALL_BYTES) -> int:
    """The fewest request bytes that hold one call of the largest size."""
    return call_bytes + ENVELOPE_BYTES


def service_limits(kind: str) -> tuple[int, int, int]:
    """What ``kind`` accepts at most: calls per request, bytes per request, bytes
    per call."""
    return _SERVICE_LIMITS[kind]


@dataclass(frozen=True, slots=True)
class DestinationSettings:
    """The data plane to ship to, with its write key, limits and timeouts.

    ``url`` is the data plane's base URL; calls go to ``{url}/v1/batch``.
    ``gzip`` defaults to on for RudderStack and off for Segment. The write key is
    left out of ``repr`` and of every message. Raises ``ConfigError`` naming the
    field when a value cannot work.
    """

    url: str
    write_key: str = field(repr=False)
    kind: Kind = "rudderstack"
    gzip: bool | None = None
    gzip_level: int = 1  # ISA-L's levels: 0 (fastest) to 3 (smallest)
    timeout: float = 10.0
    max_calls: int = 500
    max_bytes: int = 475_000
    max_call_bytes: int = MAX_CALL_BYTES
    # How long calls refused with none taken after them are held and sent again
    # (they may be an outage: a gateway answering 400 to everything) before
    # those refused alone become dead letters.
    refusal_patience: float = 600.0

    def __post_init__(self) -> None:
        _check_url(self.url)
        if self.kind not in _SERVICE_LIMITS:
            raise ConfigError(
                f"destination kind {self.kind!r} is unknown",
                hint="use 'rudderstack' or 'segment'",
            )
        if not self.write_key.strip():
            raise ConfigError("destination write_key is empty")
        if not 0 <= self.gzip_level <= 3:
            raise ConfigError(f"destination gzip_level {self.gzip_level} is not 0-3")
        if not self.timeout > 0:
            raise ConfigError(f"destination timeout {self.timeout} s is not positive")
        if not self.refusal_patience >= 0:
            raise ConfigError(
                f"destination refusal_patience {self.refusal_patience} s is negative"
            )
        self._check_limits()

    @property
    def use_gzip(self) -> bool:
        """Whether request bodies are gzip-compressed."""
        return self.gzip if self.gzip is not None else self.kind == "rudderstack"

    @property
    def endpoint(self) -> str:
        """The batch endpoint calls are posted to."""
        base = self.url.rstrip("/")
        return base if base.endswith("/v1/batch") else f"{base}/v1/batch"

    @property
    def limits(self) -> BatchLimits:
        """The batching limits these settings ask for."""
        return BatchLimits(self.max_calls, self.max_bytes, self.max_call_bytes)

    def _check_limits(self) -> None:
        calls, request_bytes, call_bytes = _SERVICE_LIMITS[self.kind]
        for name, value, ceiling in (
            ("batch_calls (CDC_TRACKER_BATCH_CALLS)", self.max_calls, calls),
            ("batch_bytes (CDC_TRACKER_BATCH_BYTES)", self.max_bytes, request_bytes),
            ("a call's size", self.max_call_bytes, call_bytes),
        ):
            if not 1 <= value <= ceiling:
                raise ConfigError(
                    f"{name} {value} is outside 1-{ceiling}, what {self.kind} accepts"
                )
        smallest = smallest_batch_bytes(self.max_call_bytes)
        if self.max_bytes < smallest:
            raise ConfigError(
                f"batch_bytes (CDC_TRACKER_BATCH_BYTES) {self.max_bytes} cannot hold "
                f"one call of the largest size, {self.max_call_bytes} (needs "
                f"{smallest})"
            )
        if self.max_call_bytes <= SENT_AT_BYTES:
            raise ConfigError(
                f"destination max_call_bytes {self.max_call_bytes} is too small"
            )


def _check_url(url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"destination url is not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(
            "destination url must be http:// or https:// with a host",
            hint="the data plane URL, for example https://hosted.example/",
        )
    if parsed.query or parsed.fragment:
        # The batch route is joined to it: what follows would end up before it.
        raise ConfigError(
            "destination url must hold no query (?...) or fragment (#...)",
            hint="the data plane URL, for example https://hosted.example/",
        )
    if parsed.userinfo:
        # They would be sent as the request's Basic auth, in the write key's place.
        raise ConfigError(
            "destination url must hold no user or password",
            hint="the write key authenticates: RUDDERSTACK_WRITE_KEY "
            "(SEGMENT_WRITE_KEY for Segment)",
        )
