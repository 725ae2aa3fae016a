"""Convert wal2json values to Python values by the column's declared type.

The result is what rule expressions see and what the encoder writes:

==========================  ===============================================
declared type               value
==========================  ===============================================
integers                    ``int``
numeric, real, double       ``Decimal`` with the server's digits (null for
                            NaN/Infinity, which wal2json 2.5 writes as null)
boolean                     ``bool``
character(n)                ``str`` without the blank padding
timestamp with time zone    aware ``datetime``
timestamp without zone      aware ``datetime`` in the rulebook's zone
date                        ``date``
json, jsonb                 the parsed document (numbers as ``Decimal``,
                            NUL characters removed)
arrays (``x[]``)            ``list`` of converted elements
anything else               ``str`` as the server printed it
==========================  ===============================================

Values Python cannot represent (``infinity``, BC dates, five-digit years) stay
strings, exactly as the server printed them, rather than failing the change.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from cdc_tracker.destination.encode import exact_number
from cdc_tracker.exact_json import NumberOutOfRange, loads
from cdc_tracker.moments import wall_time
from cdc_tracker.rules.expr import Kind

Converter = Callable[[Any], Any]


class ConversionError(ValueError):
    """A value that cannot be converted, for a reason that names no value."""


_INTEGERS = frozenset({"smallint", "integer", "bigint", "oid"})
_DECIMALS = frozenset({"numeric", "real", "double precision", "decimal"})


def _same(value: Any) -> Any:
    return value


def _integer(value: Any) -> Any:
    # Array elements arrive as text, scalars as JSON numbers.
    return int(value) if isinstance(value, str) else value


def _boolean(value: Any) -> Any:
    return value in ("t", "true") if isinstance(value, str) else value


def _number(value: Any) -> Any:
    # A domain over numeric arrives as a string even with the base type known;
    # its NaN or Infinity reads as null, as wal2json writes them for the base types.
    if isinstance(value, str):
        try:
            number = Decimal(value)
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return value


def _blank_padded(value: Any) -> Any:
    return value.rstrip(" ") if isinstance(value, str) else value


def _timestamptz(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return value


def _date(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        return value


def _json(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        document = loads(value)
        # json (unlike jsonb) keeps \u0000, which jsonb columns downstream refuse.
        return _without_nul(document) if "\\u0000" in value else document
    except RecursionError:
        # PostgreSQL takes documents nested thousands deep; no destination does.
        raise ConversionError("the json document is nested too deeply") from None
    except NumberOutOfRange as exc:  # the json type checks only the syntax
        raise ConversionError(f"the json document holds {exc}") from None


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\0", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(item) for k, item in value.items()}
    return value


def _timestamp_in(zone: tzinfo) -> Converter:
    if str(zone) == "UTC":  # no wall time repeats or is skipped
        return _timestamp_in_utc

    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return wall_time(datetime.fromisoformat(value), zone)
        except (ValueError, OverflowError):
            # Overflow: a wall time whose instant is past the ends of Python's
            # calendar (9999-12-31 23:00 west of UTC) stays text, as year 10000.
            return value

    return convert


def _timestamp_in_utc(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:
        return value


def base_type(declared: str) -> str:
    """``numeric(12,2)`` -> ``numeric``; ``character varying(8)[]`` keeps ``[]``."""
    head, paren, rest = declared.partition("(")
    if not paren:
        return declared
    return head + rest.partition(")")[2]


@lru_cache(maxsize=512)
def converter_for(declared: str, zone: tzinfo) -> Converter:
    """The converter for one declared type (cached: types repeat on every row)."""
    name = base_type(declared)
    if name.endswith("[]"):
        element = converter_for(name[:-2], zone)
        return lambda value: _array(value, element)
    if name in _INTEGERS:
        return _integer
    if name == "boolean":
        return _boolean
    if name in _DECIMALS:
        return _number
    if name == "character":
        return _blank_padded
    if name == "timestamp with time zone":
        return _timestamptz
    if name == "timestamp without time zone":
        return _timestamp_in(zone)
    if name == "date":
        return _date
    if name in ("json", "jsonb"):
        return _json
    if name == "bytea":
        return _bytea
    return _same


def _bytea(value: Any) -> Any:
    """Bytes as hex digits, as wal2json writes a bytea: without the ``\\x`` it cuts
    off, which an array's elements, a lookup's and a replay's values still carry."""
    if isinstance(value, str) and value.startswith("\\x"):
        return value[2:]
    return value


@lru_cache(maxsize=512)
def output_converter_for(declared: str, zone: tzinfo) -> Converter:
    """The converter for a value sent as it is (a bare column as a trait or
    property): as ``converter_for``, with numerics already in their JSON text."""
    convert = converter_for(declared, zone)
    name = base_type(declared)
    if name in _DECIMALS:
        return lambda value: exact_number(convert(value))
    return convert


# How the call writer (mapping/_writer.c) writes a declared type's values: as
# they are (SAME), an int as it is (INTEGER), a bool as it is (BOOLEAN), a Decimal
# or an int as its exact text (NUMBER), a text without its blank padding
# (PADDED), the server's text of a timestamptz as orjson writes its datetime
# (TIMESTAMPTZ); anything else, and any other value or form of those types,
# through the type's output converter (CONVERTED).
SAME, INTEGER, BOOLEAN, NUMBER, CONVERTED, PADDED, TIMESTAMPTZ = range(7)


@lru_cache(maxsize=512)
def output_kind(declared: str, zone: tzinfo) -> int:
    """The writer's kind for one declared type (see above)."""
    convert = converter_for(declared, zone)
    if convert is _same:
        return SAME
    if convert is _integer:
        return INTEGER
    if convert is _boolean:
        return BOOLEAN
    if convert is _number:
        return NUMBER
    if convert is _blank_padded:
        return PADDED
    if convert is _timestamptz:
        return TIMESTAMPTZ
    return CONVERTED


def _array(value: Any, element: Converter) -> Any:
    if not isinstance(value, str):
        return value
    parsed, end = parse_array(value, 0)
    if end != len(value):
        raise ValueError("trailing characters after array literal")
    return _convert_nested(parsed, element)


def _convert_nested(items: list[Any], element: Converter) -> list[Any]:
    return [
        _convert_nested(item, element)
        if isinstance(item, list)
        else (None if item is None else element(item))
        for item in items
    ]


def parse_array(text: str, start: int) -> tuple[list[Any], int]:
    """Parse a PostgreSQL array literal from ``text[start]`` (which must be ``{``).

    Returns the nested lists of element strings (``None`` for an unquoted NULL)
    and the index after the closing brace.
    """
    if text.startswith("[", start):  # explicit bounds: [0:2]={...}
        start = text.index("=", start) + 1
    if not text.startswith("{", start):
        raise ValueError("array literal must start with '{'")
    items: list[Any] = []
    i = start + 1
    if text.startswith("}", i):
        return items, i + 1
    while True:
        if text.startswith("{", i):
            nested, i = parse_array(text, i)
            items.append(nested)
        elif text.startswith('"', i):
            element, i = _quoted(text, i + 1)
            items.append(element)
        else:
            end = _unquoted_end(text, i)
            raw = text[i:end].strip()
            items.append(None if raw.upper() == "NULL" else raw)
            i = end
        if text.startswith("}", i):
            return items, i + 1
        if not text.startswith(",", i):
            raise ValueError("expected ',' or '}' in array literal")
        i += 1


def _quoted(text: str, i: int) -> tuple[str, int]:
    out = []
    while True:
        char = text[i]
        if char == "\\":
            out.append(text[i + 1])
            i += 2
        elif char == '"':
            return "".join(out), i + 1
        else:
            out.append(char)
            i += 1


def _unquoted_end(text: str, i: int) -> int:
    while text[i] not in ",}":
        i += 1
    return i


def orders_as_text(declared: str) -> bool:
    """Whether PostgreSQL orders this type's values as their text (the text
    types); expressions compare any other type of kind text by its text."""
    return base_type(declared) in _TEXT_TYPES


_TEXT_TYPES = frozenset(
    {"text", "character varying", "character", "name", '"char"', "bpchar"}
)


def kind_of(declared: str) -> Kind:
    """What rule expressions may do with a column of this declared type."""
    name = base_type(declared)
    if name.endswith("[]"):
        return Kind.ARRAY
    if name in _INTEGERS or name in _DECIMALS:
        return Kind.NUMBER
    if name == "boolean":
        return Kind.BOOL
    if name.startswith("timestamp"):
        return Kind.TIMESTAMP
    if name == "date":
        return Kind.DATE
    if name in ("json", "jsonb"):
        return Kind.JSON
    return Kind.TEXT
