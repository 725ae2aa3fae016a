"""The gateway's checks, as pure functions: auth, body decoding, batch shape, fields.

Each check returns ``None`` (or the decoded value) when the request passes and an
:class:`Answer` when it must be refused. Bodies follow the wire contract
(/work/shared/rudderstack-contract.md): plain text ending in a newline.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from cdc_tracker.exact_json import integer

GzipMode = Literal["accept", "require", "refuse"]

# Far above any limit the fake enforces; only guards memory against a gzip bomb.
DECODE_CAP_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete reply: status, body text and extra headers."""

    status: int
    body: str
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain; charset=utf-8"


NO_WRITE_KEY = Answer(401, "failed to read writekey from header\n")
UNKNOWN_WRITE_KEY = Answer(401, "invalid write key\n")
SOURCE_DISABLED = Answer(404, "source is disabled\n")
UNREADABLE_BODY = Answer(500, "failed to read body from request\n")
INVALID_JSON = Answer(400, "invalid json\n")
NOT_AN_EVENT = Answer(400, "event is not a valid rudder event\n")
NO_USER = Answer(400, "request neither has anonymousId nor userId\n")
RATE_LIMITED = Answer(429, "max requests limit reached\n")
TOO_LARGE = Answer(413, "request size exceeds max limit\n")
EMPTY_BATCH = Answer(400, "empty batch payload\n")
GZIP_REQUIRED = Answer(415, "fake requires Content-Encoding: gzip\n")
GZIP_REFUSED = Answer(415, "fake refuses Content-Encoding: gzip\n")
STALLED = Answer(504, "gateway timeout\n")
OK = Answer(200, "ok")


def read_write_key(authorization: str | None) -> str | None:
    """The Basic-auth username, or ``None`` when the header cannot give one."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, _ = decoded.partition(":")
    return username if colon and username else None


def check_write_key(
    authorization: str | None, write_keys: Collection[str]
) -> tuple[str | None, Answer | None]:
    """The write key sent and, when it is missing or unknown, the 401 to give."""
    key = read_write_key(authorization)
    if key is None:
        return None, NO_WRITE_KEY
    return key, None if key in write_keys else UNKNOWN_WRITE_KEY


def decode_body(
    raw: bytes, content_encoding: str | None, mode: GzipMode
) -> bytes | Answer:
    """The body after gunzip when ``Content-Encoding`` is exactly ``gzip``.

    A corrupt gzip stream answers 500 (the open-source gateway's status); a body
    decoding past :data:`DECODE_CAP_BYTES` answers 413 at once.
    """
    is_gzip = content_encoding == "gzip"
    if mode == "refuse" and is_gzip:
        return GZIP_REFUSED
    if mode == "require" and not is_gzip:
        return GZIP_REQUIRED
    if not is_gzip:
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            data = stream.read(DECODE_CAP_BYTES + 1)
    except (OSError, EOFError, zlib.error):
        return UNREADABLE_BODY
    return TOO_LARGE if len(data) > DECODE_CAP_BYTES else data


def parse_calls(data: bytes, single_type: str | None) -> list[Any] | Answer:
    """The batch elements, unchecked; ``[]`` when there is no usable ``batch``.

    ``single_type`` is set for ``/v1/identify`` and ``/v1/track``: the body is one
    call, wrapped into a one-element batch whose ``type`` is the route's, as the
    gateway does.
    """
    document = _load_json(data)
    if document is _INVALID:
        return INVALID_JSON
    if single_type is not None:
        if not isinstance(document, dict):
            return NOT_AN_EVENT
        return [{**document, "type": single_type}]
    batch = document.get("batch") if isinstance(document, dict) else None
    return batch if isinstance(batch, list) else []


_INVALID = object()


def _load_json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses some valid JSON (integers past 64 bits, lone surrogates).
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_int=integer)
    except (ValueError, RecursionError):
        return _INVALID


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_elements(calls: list[Any]) -> Answer | None:
    """Every element an object, then every call naming a user; else the 400."""
    if not all(isinstance(call, dict) for call in calls):
        return NOT_AN_EVENT
    if not all(_names_a_user(call) for call in calls):
        return NO_USER
    return None


def _names_a_user(call: dict[str, Any]) -> bool:
    for key in ("userId", "anonymousId"):
        value = call.get(key)
        if isinstance(value, str):
            if value.strip():
                return True
        elif value is not None:
            return True  # the gateway reads a number (or anything else) as text
    return False


def rejected_call(
    calls: list[dict[str, Any]], rejected_ids: Collection[str]
) -> Answer | None:
    """The 400 for a batch holding a messageId the test chose to refuse."""
    for index, call in enumerate(calls):
        message_id = call.get("messageId")
        if isinstance(message_id, str) and message_id in rejected_ids:
            return Answer(
                400, f"batch[{index}]: messageId {message_id!r} rejected by test\n"
            )
    return None
