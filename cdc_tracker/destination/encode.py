"""Encode calls to JSON bytes once, so that every resend carries the same bytes.

``encode_call`` turns a ``Call`` into the JSON object RudderStack expects, without
``sentAt``; ``with_sent_at`` splices the per-request ``sentAt`` in without
re-encoding. Exact numerics (``Decimal``) keep their digits: they never pass
through ``float``. Datetimes come out RFC 3339 (naive ones are taken as UTC).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import orjson

from cdc_tracker.model import Call

# Times are written by moment_text (encode_other), not by orjson: orjson rounds an
# offset with seconds (local mean time, before time zones) to the minute.
ENCODE_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME
# The most digits a PostgreSQL numeric holds after the point, and before it.
NUMERIC_MAX_SCALE = 16_383
NUMERIC_MAX_INTEGER_DIGITS = 131_072
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


def encode_call(call: Call) -> bytes:
    """Return ``call.payload`` as compact JSON bytes, ``sentAt`` excluded.

    Raises ``ValueError`` when the payload already holds ``sentAt``, holds a
    NaN or infinite ``Decimal``, or holds a value JSON cannot carry. The message
    names the problem, never the value; nor the call, which its dead letter
    names, so that letters with one cause share one reason in counts.
    """
    payload = call.payload
    if "sentAt" in payload:
        raise ValueError(
            f"call {call.message_id} carries sentAt; the shipper sets it per request"
        )
    return encode_value(payload)


def with_sent_at(encoded: bytes, sent_at: str) -> bytes:
    """Return the encoded call object with ``"sentAt": sent_at`` as its last key.

    ``encoded`` must be a JSON object as ``encode_call`` returns it; ``sent_at``
    must need no JSON escaping (``rfc3339_ms`` output does not).
    """
    tail = b'"sentAt":"' + sent_at.encode("ascii") + b'"}'
    if encoded == b"{}":
        return b"{" + tail
    return encoded[:-1] + b"," + tail


def rfc3339_ms(dt: datetime) -> str:
    """Format ``dt`` as UTC with milliseconds and ``Z``: ``2026-12-04T16:42:12.123Z``.

    A naive datetime is taken to be UTC already.
    """
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}."
        f"{dt.microsecond // 1000:03d}Z"
    )


def exact_number(value: Any) -> Any:
    """A finite ``Decimal`` as the JSON text ``encode_call`` would write for it,
    ready for orjson; anything else unchanged.

    The mapping applies it to numeric traits and properties, so that encoding a
    call does not call back into Python for each of them.
    """
    if type(value) is Decimal and value.is_finite():
        return orjson.Fragment(_decimal_text(value))
    return value


def dumps(value: Any) -> bytes:
    """``value`` as JSON, numbers exact and times as ``moment_text`` writes them;
    raises ``orjson.JSONEncodeError`` (``encode_value`` widens and explains)."""
    return orjson.dumps(value, default=encode_other, option=ENCODE_OPTIONS)


def encode_other(value: object) -> orjson.Fragment | str:
    """orjson's ``default``: a ``Decimal`` as its exact text, a time as
    ``moment_text`` writes it; nothing else."""
    if isinstance(value, Decimal):
        return orjson.Fragment(_decimal_text(value))
    if isinstance(value, datetime):
        return moment_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time) and value.tzinfo is None:
        return value.isoformat()
    raise TypeError(f"cannot encode a value of type {type(value).__name__}")


def moment_text(value: datetime) -> str:
    """A time as RFC 3339 writes it, to the microsecond (none when zero): in its
    own offset, ``Z`` for UTC or a naive time (taken as UTC), and in UTC when
    its offset has seconds, which RFC 3339 cannot write (Amsterdam until 1937
    was 19 min 32 s ahead): the instant stays exact."""
    offset = value.utcoffset()
    if offset is None or not offset:
        return value.replace(tzinfo=None).isoformat() + "Z"
    if offset.seconds % 60 or offset.microseconds:
        try:
            return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"
        except OverflowError:
            pass  # its instant is outside years 1-9999: the offset to the minute
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{value.replace(tzinfo=None).isoformat()}{sign}{hours:02}:{minutes:02}"


def _decimal_text(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError("a decimal value is NaN or infinite")
    text = str(value)
    # str() goes scientific for tiny values (1E-7); "f" writes those as stored, as
    # PostgreSQL does. Beyond a numeric's scale (a json number such as 1e-100000)
    # the scientific form stays: "f" would write every zero. Large exponents (1E+3)
    # stay as str() wrote them: "f" would invent zeros.
    if "E-" not in text:
        return text
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    return format(value, "f") if exponent >= -NUMERIC_MAX_SCALE else text


def encode_value(value: Any) -> bytes:
    """``value`` as a payload writes it: numbers exact, dates in ISO 8601.
    Raises ``ValueError`` for a value JSON cannot carry, naming the problem."""
    try:
        return dumps(value)
    except orjson.JSONEncodeError as exc:
        if str(exc) != "Integer exceeds 64-bit range":
            raise ValueError(_reason(exc)) from exc
    # Rare: a numeric without a fraction decoded to an int beyond 64 bits.
    try:
        return dumps(widen_big_ints(value))
    except orjson.JSONEncodeError as exc:
        raise ValueError(_reason(exc)) from exc


def plain_text(value: Decimal) -> str:
    """A decimal as plain digits, every one kept (``1E+3`` -> ``1000``, ``4.10``
    stays), as PostgreSQL writes a numeric; past what a numeric holds (131,072
    digits before the point, 16,383 after: a json number can go further) its
    scientific form, which stays short where the digits would fill the memory."""
    if not value.is_finite():
        return str(value)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if exponent >= -NUMERIC_MAX_SCALE and value.adjusted() < NUMERIC_MAX_INTEGER_DIGITS:
        return format(value, "f")
    return str(value)


def _reason(exc: orjson.JSONEncodeError) -> str:
    cause = exc.__cause__
    reason = str(cause) if isinstance(cause, ValueError | TypeError) else str(exc)
    if reason == "Recursion limit reached":  # orjson's words
        return "a json value nests too deeply (past 255 levels with the call's own)"
    return reason


def widen_big_ints(value: Any) -> Any:
    """``value`` with integers beyond 64 bits as exact JSON fragments for orjson."""
    if isinstance(value, dict):
        return {key: widen_big_ints(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [widen_big_ints(item) for item in value]
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not _INT64_MIN <= value <= _UINT64_MAX
    ):
        return orjson.Fragment(str(value))
    return value
