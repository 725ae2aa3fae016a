"""Read JSON with every number exact, whatever its size.

A number with a fraction or an exponent becomes a ``Decimal`` from its text. An
integer stays an ``int`` up to Python's limit on converting digits (4,300 by
default); beyond it, where a PostgreSQL numeric can still go (131,072 digits before
the point), it becomes a ``Decimal`` too, as exact.

A number whose exponent no ``Decimal`` can hold (the json type takes
``1e9999999999999999999``) raises ``NumberOutOfRange``.

This is the general path: the wal2json parser decodes with msgspec, which is several
times faster but refuses such integers, and falls back to ``loads`` for the rare
row it refuses.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

_INT_DIGITS = sys.get_int_max_str_digits()  # 0: no limit


def integer(text: str) -> int | Decimal:
    """An integer literal as ``int``, or as ``Decimal`` past the digit limit, or
    for ``-0``, whose sign an ``int`` would drop."""
    if text == "-0":
        return Decimal(text)
    if _INT_DIGITS and len(text) > _INT_DIGITS:  # the sign counts: a bound, not exact
        return Decimal(text)
    return int(text)


class NumberOutOfRange(ValueError):
    """A JSON number beyond what a ``Decimal`` holds."""


def _fraction(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise NumberOutOfRange("a number whose exponent no decimal can hold") from None


_decoder = json.JSONDecoder(parse_float=_fraction, parse_int=integer)


def loads(data: str | bytes | bytearray | memoryview) -> Any:
    """Decode one JSON document; raises ``ValueError`` when it is not one, or
    ``NumberOutOfRange``."""
    text = data if isinstance(data, str) else bytes(data).decode()
    return _decoder.decode(text)
