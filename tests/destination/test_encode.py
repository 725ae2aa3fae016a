"""Encoding calls: exact numerics, RFC 3339 times, and the sentAt splice."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from cdc_tracker.destination import encode_call, rfc3339_ms, with_sent_at
from cdc_tracker.destination.encode import ENCODE_OPTIONS, encode_other, moment_text
from cdc_tracker.model import Call, Lsn


def call_with(payload: dict[str, Any]) -> Call:
    return Call("m1", "u1", payload, "users", Lsn(1), 0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("12345678901234567890.123456789"), b"12345678901234567890.123456789"),
        (Decimal("4.10"), b"4.10"),
        (Decimal("-0.000001"), b"-0.000001"),
        (Decimal("0E-5"), b"0.00000"),
        (Decimal("7"), b"7"),
        (Decimal("1E+3"), b"1E+3"),
        (Decimal("1E-16383"), b"0." + b"0" * 16382 + b"1"),  # a numeric's scale
        (Decimal("1E-16384"), b"1E-16384"),  # beyond: a json number, not expanded
        (Decimal("-2.5E-20000000"), b"-2.5E-20000000"),
    ],
)
def test_decimal_is_written_with_its_exact_digits(value: Decimal, text: bytes) -> None:
    encoded = encode_call(call_with({"x": value}))

    assert encoded == b'{"x":' + text + b"}"
    assert orjson.loads(encoded)["x"] == pytest.approx(float(value))


@pytest.mark.parametrize("value", ["NaN", "sNaN", "Infinity", "-Infinity"])
def test_non_finite_decimal_is_refused_with_value_error(value: str) -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode_call(call_with({"traits": {"x": Decimal(value)}}))


def test_payload_holding_sent_at_is_refused() -> None:
    with pytest.raises(ValueError, match="sentAt"):
        encode_call(call_with({"sentAt": "2026-01-01T00:00:00.000Z"}))


def test_unencodable_value_is_refused_naming_its_type_not_its_value() -> None:
    with pytest.raises(ValueError, match="bytes") as caught:
        encode_call(call_with({"x": b"secret-bytes"}))

    assert "secret" not in str(caught.value)


def test_datetimes_come_out_rfc3339_and_dates_as_iso_dates() -> None:
    paris = timezone(timedelta(hours=2))
    payload = {
        "naive": datetime(2026, 1, 2, 3, 4, 5, 120000),
        "utc": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "paris": datetime(2026, 1, 2, 3, 4, 5, tzinfo=paris),
        "day": date(2026, 1, 2),
    }

    decoded = orjson.loads(encode_call(call_with(payload)))

    assert decoded == {
        "naive": "2026-01-02T03:04:05.120000Z",
        "utc": "2026-01-02T03:04:05Z",
        "paris": "2026-01-02T03:04:05+02:00",
        "day": "2026-01-02",
    }


def test_nested_objects_and_lists_keep_their_order_and_values() -> None:
    payload = {"b": [1, {"c": Decimal("1.50")}, None, True], "a": {"z": "é"}}

    encoded = encode_call(call_with(payload))

    assert encoded == '{"b":[1,{"c":1.50},null,true],"a":{"z":"é"}}'.encode()


def test_integer_beyond_64_bits_is_written_exactly() -> None:
    big = 2**70 + 1

    encoded = encode_call(call_with({"n": big, "list": [-big], "small": 5}))

    assert encoded == f'{{"n":{big},"list":[{-big}],"small":5}}'.encode()
    assert orjson.loads(encoded)["small"] == 5


def test_with_sent_at_appends_the_key_and_leaves_the_rest_byte_identical() -> None:
    encoded = encode_call(call_with({"type": "identify", "userId": "u1"}))

    stamped = with_sent_at(encoded, "2026-12-04T16:42:12.123Z")

    assert stamped.startswith(encoded[:-1])
    assert orjson.loads(stamped) == {
        "type": "identify",
        "userId": "u1",
        "sentAt": "2026-12-04T16:42:12.123Z",
    }


def test_with_sent_at_on_an_empty_object_stays_valid_json() -> None:
    assert orjson.loads(with_sent_at(b"{}", "x")) == {"sentAt": "x"}


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (
            datetime(2026, 12, 4, 16, 42, 12, 123999, tzinfo=UTC),
            "2026-12-04T16:42:12.123Z",
        ),
        (datetime(2026, 12, 4, 16, 42, 12), "2026-12-04T16:42:12.000Z"),
        (
            datetime(2026, 12, 5, 1, 0, 0, 5000, tzinfo=timezone(timedelta(hours=9))),
            "2026-12-04T16:00:00.005Z",
        ),
        (datetime(999, 1, 1, tzinfo=UTC), "0999-01-01T00:00:00.000Z"),
    ],
)
def test_rfc3339_ms_writes_utc_with_milliseconds_and_z(
    moment: datetime, text: str
) -> None:
    assert rfc3339_ms(moment) == text


# Times orjson wrote itself before times were ours to write: every offset in
# whole minutes, naive times, years at both ends, microseconds.
_ORJSON_TIMES = [
    datetime(2026, 12, 4, 16, 42, 12, 123456, tzinfo=UTC),
    datetime(2026, 12, 4, 16, 42, 12),
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(-timedelta(hours=12))),
    datetime(999, 6, 1, 0, 0, 0, 1, tzinfo=timezone(-timedelta(minutes=30))),
    datetime(2026, 3, 29, 2, 30, tzinfo=timezone(timedelta(hours=5, minutes=45))),
    date(5, 3, 4),
]


@pytest.mark.parametrize("value", _ORJSON_TIMES, ids=str)
def test_times_are_written_as_orjson_wrote_them(value: datetime | date) -> None:
    orjson_wrote = orjson.dumps(value, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z)

    assert orjson.dumps(value, default=encode_other, option=ENCODE_OPTIONS) == (
        orjson_wrote
    )


def test_an_offset_with_seconds_is_written_as_its_instant_in_utc() -> None:
    local_mean_time = timezone(timedelta(minutes=19, seconds=32))  # Amsterdam, 1850

    assert moment_text(datetime(1850, 6, 1, 12, tzinfo=local_mean_time)) == (
        "1850-06-01T11:40:28Z"
    )
    # Past the calendar's ends in UTC: the offset to the minute, as orjson wrote it.
    assert moment_text(datetime(1, 1, 1, tzinfo=local_mean_time)) == (
        "0001-01-01T00:00:00+00:20"
    )
    west = timezone(-timedelta(minutes=19, seconds=32))
    assert moment_text(datetime(9999, 12, 31, 23, 59, tzinfo=west)) == (
        "9999-12-31T23:59:00-00:20"
    )
