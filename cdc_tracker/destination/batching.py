"""Group encoded calls, in order, into requests that fit the destination's limits."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import accumulate
from operator import add
from typing import Any

import msgspec

from cdc_tracker.destination.encode import encode_call, with_sent_at
from cdc_tracker.exact_json import loads
from cdc_tracker.model import Call, Lsn

_ENVELOPE_OPEN = b'{"batch":['
_ENVELOPE_CLOSE = b"]}"
ENVELOPE_BYTES = len(_ENVELOPE_OPEN) + len(_ENVELOPE_CLOSE)
# What with_sent_at adds to a call: ,"sentAt":"2026-12-04T16:42:12.123Z"
SENT_AT_BYTES = len(b',"sentAt":""') + len("2026-12-04T16:42:12.123Z")


_join_bodies: Callable[[list[EncodedCall], bytes], bytes | None] | None
try:
    from cdc_tracker.mapping._writer import join_bodies as _join_bodies
except ImportError:  # built without a C compiler
    _join_bodies = None


# The largest call sent: Segment takes 32 KB; RudderStack more, but a call this
# large is a mistake more often than a need.
MAX_CALL_BYTES = 32_000


class EncodedCall(msgspec.Struct):
    """A call as JSON bytes (without ``sentAt``), encoded once for every send, and
    what names it in counts, logs and dead letters.

    The daemon encodes each call right after mapping it, while its payload is still
    in the processor's cache, and keeps only these bytes: the payload dict is freed
    at once instead of living until its batch is acknowledged. Treat it as
    immutable: resends must carry the same bytes. A msgspec struct rather than a
    dataclass: one is made per call, in 0.05 us instead of 0.16.
    """

    message_id: str
    user_id: str
    body: bytes
    rule: str
    table: str
    commit_lsn: Lsn
    ordinal: int
    kind: str  # identify or track
    event: str  # a track's event name; empty for an identify

    @classmethod
    def of(cls, call: Call) -> EncodedCall:
        """Encode ``call``; raises ``ValueError`` as ``encode_call`` does."""
        payload = call.payload
        return cls(
            call.message_id,
            call.user_id,
            encode_call(call),
            call.rule,
            call.table,
            call.commit_lsn,
            call.ordinal,
            payload.get("type", ""),
            payload.get("event", ""),
        )

    def payload(self) -> dict[str, Any]:
        """The call as a dict again (for a dead letter), numerics exact."""
        decoded: dict[str, Any] = loads(self.body)
        return decoded

    @property
    def sent_size(self) -> int:
        """Bytes this call takes in a request once ``sentAt`` is added."""
        return len(self.body) + SENT_AT_BYTES


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """Per-request and per-call limits, in calls and uncompressed bytes."""

    max_calls: int = 500
    max_bytes: int = 475_000
    max_call_bytes: int = MAX_CALL_BYTES


@dataclass(slots=True)
class Batches:
    """What ``make_batches`` made: requests to send, and calls never to send."""

    requests: list[list[EncodedCall]] = field(default_factory=list)
    oversize: list[tuple[EncodedCall, str]] = field(default_factory=list)


def make_batches(calls: Iterable[EncodedCall], limits: BatchLimits) -> Batches:
    """Split ``calls`` into requests, keeping their order, each within ``limits``.

    A request holds at most ``limits.max_calls`` calls and its body, envelope and
    ``sentAt`` included, at most ``limits.max_bytes`` bytes. A call over
    ``limits.max_call_bytes`` goes to ``oversize`` with the reason, not into a
    request.
    """
    calls = calls if isinstance(calls, list) else list(calls)
    sizes = [len(call.body) for call in calls]
    if max(sizes, default=0) + SENT_AT_BYTES > limits.max_call_bytes:
        return _batches_call_by_call(calls, limits)
    # No call over its limit (nearly always): cut where the running total of
    # bytes would pass the request's limit, found by bisection, not call by call.
    step = SENT_AT_BYTES + 1  # a comma before each call, as below
    totals = list(
        map(add, accumulate(sizes, initial=0), range(0, step * len(sizes) + 1, step))
    )
    room = limits.max_bytes - (ENVELOPE_BYTES - 1)
    batches = Batches()
    start, count = 0, len(calls)
    while start < count:
        last = min(start + limits.max_calls, count)
        end = bisect_right(totals, totals[start] + room, start + 1, last + 1) - 1
        end = max(end, start + 1)  # a call alone goes, whatever its size
        batches.requests.append(calls[start:end])
        start = end
    return batches


def _batches_call_by_call(calls: list[EncodedCall], limits: BatchLimits) -> Batches:
    """``make_batches`` when some call is over the per-call limit."""
    batches = Batches()
    max_calls, max_bytes = limits.max_calls, limits.max_bytes
    max_call_bytes = limits.max_call_bytes
    current: list[EncodedCall] = []
    size = ENVELOPE_BYTES - 1  # as if every call, the first too, had a comma
    for call in calls:
        added = len(call.body) + SENT_AT_BYTES + 1
        if added > max_call_bytes + 1:
            reason = oversize_reason(added - 1, max_call_bytes)
            batches.oversize.append((call, reason))
            continue
        if current and (len(current) >= max_calls or size + added > max_bytes):
            batches.requests.append(current)
            current, size = [], ENVELOPE_BYTES - 1
        current.append(call)
        size += added
    if current:
        batches.requests.append(current)
    return batches


def request_body(batch: list[EncodedCall], sent_at: str) -> bytes:
    """Return the JSON request body for ``batch``, every call stamped ``sent_at``."""
    tail = b',"sentAt":"' + sent_at.encode("ascii") + b'"}'
    if _join_bodies is not None:
        # The same join in C, with no view per call: the shipping thread holds
        # the GIL the main thread maps with.
        joined = _join_bodies(batch, tail)
        if joined is not None:
            return joined
    # Each call's bytes but its closing brace, joined by the stamp and a comma:
    # one copy of every call, where stamping each call apart took three.
    heads = [memoryview(call.body)[:-1] for call in batch]
    if min(map(len, heads), default=2) < 2:  # "{}" takes no comma before sentAt
        calls = b",".join([with_sent_at(call.body, sent_at) for call in batch])
        return _ENVELOPE_OPEN + calls + _ENVELOPE_CLOSE
    return b"".join(
        [
            _ENVELOPE_OPEN,
            (tail + b",").join(heads),
            tail if heads else b"",
            _ENVELOPE_CLOSE,
        ]
    )


def oversize_reason(size: int, limit: int = MAX_CALL_BYTES) -> str:
    """Why a call of ``size`` bytes (``sentAt`` included) is not sent."""
    # What comes before the colon is the reason's kind, counted on /metrics: the
    # call's own size comes after it, or each size would be a label of its own.
    return f"over the {limit}-byte per-call limit: the call is {size} bytes"
