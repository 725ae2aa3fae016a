"""What the fake RudderStack remembers: accepted calls and every request's outcome.

A request's decoded body is kept once, as bytes; its calls are parsed again only when
a test looks at them, and the exact JSON text of a call (with every digit of every
number) is recovered on demand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from cdc_tracker.exact_json import integer, loads
from cdc_tracker.testing._rudder_checks import Answer, parse_calls

_WHITESPACE = re.compile(r"[ \t\n\r]*")


class ReceivedBatch:
    """The decoded body of one request, whose calls are materialised on demand.

    ``route_type`` is the call type a single-call route forces (``/v1/identify``,
    ``/v1/track``) or ``None`` for ``/v1/batch``. Only bytes and a tuple of ids
    are kept per request: parsed dicts are rebuilt when a test asks for them, so
    a long run does not fill the garbage collector's heap.
    """

    __slots__ = (
        "_calls",
        "_texts",
        "arrived",
        "data",
        "message_ids",
        "request_no",
        "route_type",
    )

    def __init__(
        self, data: bytes, route_type: str | None, request_no: int, arrived: float
    ) -> None:
        self.data = data
        self.route_type = route_type
        self.request_no = request_no
        self.arrived = arrived
        self.message_ids: tuple[Any, ...] = ()
        self._calls: list[ReceivedCall] | None = None
        self._texts: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self.message_ids)

    def calls(self, payloads: list[dict[str, Any]] | None = None) -> list[ReceivedCall]:
        """The calls of this batch, parsed once and cached (from ``payloads``
        when the caller already holds them)."""
        if self._calls is None:
            if payloads is None:
                parsed = parse_calls(self.data, self.route_type)
                assert isinstance(parsed, list), "an accepted body parses again"
                payloads = parsed
            # Idempotent, so two threads racing here store equal lists.
            self._calls = [
                ReceivedCall(payload, self.request_no, index, self.arrived, self)
                for index, payload in enumerate(payloads)
            ]
        return self._calls

    def call_text(self, index: int) -> bytes:
        """The exact bytes of call ``index`` as the client sent them."""
        if self._texts is None:
            self._texts = _call_texts(self.data, single=self.route_type is not None)
        return self._texts[index]


def _call_texts(data: bytes, *, single: bool) -> list[bytes]:
    text = data.decode("utf-8-sig")  # the stdlib parser also skips a BOM
    if single:
        return [text.strip(" \t\n\r").encode("utf-8")]
    return [text[start:end].encode("utf-8") for start, end in batch_spans(text)]


def batch_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the elements of the top-level ``batch`` array.

    ``text`` must already be known to be valid JSON holding an object. When the
    key repeats, the last one wins, as it does for the parsed dict.
    """
    decoder = json.JSONDecoder(parse_int=integer)
    pos = _skip(text, 0) + 1  # past "{"
    spans: list[tuple[int, int]] = []
    while True:
        pos = _skip(text, pos)
        if text[pos] == "}":
            return spans
        key, pos = decoder.raw_decode(text, pos)
        pos = _skip(text, _skip(text, pos) + 1)  # past ":"
        if key == "batch" and text[pos] == "[":
            spans, pos = _array_spans(decoder, text, pos)
        else:
            _, pos = decoder.raw_decode(text, pos)
        pos = _skip(text, pos)
        if text[pos] == ",":
            pos += 1


def _array_spans(
    decoder: json.JSONDecoder, text: str, pos: int
) -> tuple[list[tuple[int, int]], int]:
    spans: list[tuple[int, int]] = []
    pos = _skip(text, pos + 1)
    while text[pos] != "]":
        _, end = decoder.raw_decode(text, pos)
        spans.append((pos, end))
        pos = _skip(text, end)
        if text[pos] == ",":
            pos = _skip(text, pos + 1)
    return spans, pos + 1


def _skip(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


@dataclass(frozen=True, slots=True, eq=False)
class ReceivedCall:
    """One call the fake accepted (answered 200, or dropped in Segment mode).

    ``payload`` is the call as parsed (floats as ``float``); ``raw`` and
    ``exact_payload()`` give the text as sent and a parse with ``Decimal`` numbers.
    ``arrived`` is ``time.monotonic()`` when its request arrived.
    """

    payload: dict[str, Any]
    request_no: int
    index: int
    arrived: float
    batch: ReceivedBatch = field(repr=False)

    @property
    def message_id(self) -> Any:
        return self.payload.get("messageId")

    @property
    def user_id(self) -> Any:
        return self.payload.get("userId")

    @property
    def anonymous_id(self) -> Any:
        return self.payload.get("anonymousId")

    @property
    def type(self) -> Any:
        return self.payload.get("type")

    @property
    def event(self) -> Any:
        return self.payload.get("event")

    @property
    def raw(self) -> bytes:
        """The exact JSON bytes of this call as the client sent them."""
        return self.batch.call_text(self.index)

    def exact_payload(self) -> dict[str, Any]:
        """The call parsed again from ``raw``, with every float as a ``Decimal``."""
        parsed: dict[str, Any] = loads(self.raw)
        return parsed


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """How the fake answered one POST.

    ``status`` is ``None`` when the connection was closed without an answer.
    ``fault`` names the switch that decided the answer (``"fail"``, ``"stall"``,
    ``"drop"``) or is ``None``. ``body_bytes`` is the decoded size (0 when the body
    was never decoded). ``dropped`` counts calls Segment mode answered 200 but
    discarded.
    """

    request_no: int
    path: str
    status: int | None
    answer: str
    n_calls: int
    body_bytes: int
    gzip: bool
    write_key: str | None
    headers: Mapping[str, str]
    arrived: float
    fault: str | None = None
    dropped: int = 0


_KEPT_HEADERS = (
    "content-type",
    "content-encoding",
    "content-length",
    "user-agent",
    "transfer-encoding",
)


@dataclass(slots=True)
class Exchange:
    """What one POST turned out to be, filled in as the checks run."""

    request_no: int
    path: str
    headers: Message
    arrived: float
    write_key: str | None = None
    body_bytes: int = 0
    n_calls: int = 0
    dropped: int = 0
    fault: str | None = None

    def record(self, answer: Answer | None) -> RequestRecord:
        """The request's record, given the answer (``None``: closed unanswered)."""
        headers = {
            name: value
            for name in _KEPT_HEADERS
            if (value := self.headers.get(name)) is not None
        }
        return RequestRecord(
            request_no=self.request_no,
            path=self.path,
            status=None if answer is None else answer.status,
            answer="" if answer is None else answer.body,
            n_calls=self.n_calls,
            body_bytes=self.body_bytes,
            gzip=self.headers.get("Content-Encoding") == "gzip",
            write_key=self.write_key,
            headers=headers,
            arrived=self.arrived,
            fault=self.fault,
            dropped=self.dropped,
        )
