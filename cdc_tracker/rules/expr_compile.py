"""Compilation of an expression tree into nested Python closures, and run-time errors.

``compile_expression(node)`` returns a function of one ``Row``; nothing dispatches on
node types at evaluation time. Each closure applies SQL's three-valued logic, turns a
type mismatch into ``EvaluationError`` (never a bare ``TypeError``) and a ``MISSING``
operand into ``MissingValue``; only a top-level column returns ``MISSING`` as is.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
from collections.abc import Callable
from datetime import MAXYEAR, UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Protocol

from cdc_tracker.destination.encode import moment_text, plain_text
from cdc_tracker.errors import CdcTrackerError
from cdc_tracker.model import MISSING
from cdc_tracker.moments import wall_time
from cdc_tracker.rules.expr_check import (
    ANY,
    KINDS,
    Kind,
    describe,
    kind_of,
    time_literal,
)
from cdc_tracker.rules.expr_parse import (
    BoolOp,
    Call,
    Col,
    Compare,
    Image,
    InList,
    IsNull,
    Lit,
    LookupCol,
    Node,
    Not,
)


class EvaluationError(CdcTrackerError):
    """The expression could not be computed for this row (a type mismatch)."""


class MissingValue(EvaluationError):
    """The expression needs a column the change does not carry."""

    def __init__(self, column: str, image: Image = "row") -> None:
        where = "the change" if image == "row" else f"the {image} row image"
        super().__init__(
            f"column '{column}' is not in {where} (an unchanged TOASTed value)",
            hint="set REPLICA IDENTITY FULL on the table, or use the column alone",
        )
        self.column = column
        self.image = image


class Row(Protocol):
    """One row change as expressions see it."""

    def value(self, image: Image, column: str) -> Any:
        """The converted value of ``column`` in ``image``, or ``MISSING``."""
        ...

    def lookup(self, name: str, column: str) -> Any:
        """The converted value of ``column`` in the row the lookup ``name`` finds.

        Raises ``EvaluationError`` when the lookup cannot give one (no row found).
        """
        ...


Fn = Callable[[Row], Any]


def compile_expression(node: Node) -> Fn:
    """A function of one row computing ``node``; see the module docstring."""
    if isinstance(node, Col):  # the one place a MISSING value passes through
        image, column = node.ref.image, node.ref.column
        return lambda row: row.value(image, column)
    return _compile(node)


def _compile(node: Node) -> Fn:
    return _COMPILERS[type(node)](node)


def _compile_literal(node: Lit) -> Fn:
    value = node.value
    return lambda row: value


def _compile_column(node: Col) -> Fn:
    image, column = node.ref.image, node.ref.column

    def read(row: Row) -> Any:
        value = row.value(image, column)
        if value is MISSING:
            raise MissingValue(column, image)
        return value

    return read


def _compile_lookup_column(node: LookupCol) -> Fn:
    name, column = node.ref.lookup, node.ref.column
    return lambda row: row.lookup(name, column)


def _compile_not(node: Not) -> Fn:
    operand = _compile(node.operand)

    def negate(row: Row) -> bool | None:
        value = operand(row)
        if value is None:
            return None
        if value is True or value is False:
            return not value
        raise _not_boolean("'not'", node.operand, value)

    return negate


def _compile_bool_op(node: BoolOp) -> Fn:
    operands = tuple(_compile(operand) for operand in node.operands)
    decisive = node.op == "or"  # the value that settles the result on its own
    neutral = not decisive
    what = f"'{node.op}'"

    def combine(row: Row) -> Any:
        unknown = False
        for index, operand in enumerate(operands):
            value = operand(row)
            if value is decisive:
                return decisive
            if value is None:
                unknown = True
            elif value is not neutral:
                raise _not_boolean(what, node.operands[index], value)
        return None if unknown else neutral

    return combine


# A comparison's operator, and the one it becomes with its sides swapped.
OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
MIRRORED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _compile_compare(node: Compare) -> Fn:
    if isinstance(node.left, Lit) and isinstance(node.left.value, str):
        # 'text' < x is x > 'text': the literal may be a time, read beside x.
        node = Compare(MIRRORED[node.op], node.right, node.left, node.offset)
    op = OPERATORS[node.op]
    if isinstance(node.right, Lit) and node.right.value is not None:
        return _compare_with_literal(node, op, node.right.value)
    left, right = _compile(node.left), _compile(node.right)

    def compare(row: Row) -> Any:
        a = left(row)
        if a is None:
            return None
        b = right(row)
        if b is None:
            return None
        left_kind, right_kind = kind_of(a), kind_of(b)
        if left_kind is not right_kind and ANY not in (left_kind, right_kind):
            places = _ends_of_time(a, b)
            if places is None:
                raise _mismatch(node, left_kind, right_kind)
            return op(*places)
        try:
            if op is operator.eq or op is operator.ne:
                return same_value(a, b) is (op is operator.eq)
            return op(a, b)
        except (TypeError, ArithmeticError):
            raise _mismatch(node, left_kind, right_kind) from None

    return compare


def _compare_with_literal(
    node: Compare, op: Callable[[Any, Any], Any], value: Any
) -> Fn:
    """``x <op> literal``, the commonest shape: the literal's kind is checked once.

    A text literal that reads as a time is compared as one with a timestamp or a
    date (``updated_at >= '2026-01-01'``).
    """
    expected = kind_of(value)
    moment = time_literal(value) if isinstance(value, str) else None
    if not isinstance(node.left, Col):
        left = _compile(node.left)
        return lambda row: _compare_value(
            node, op, left(row), value, expected, moment=moment
        )
    image, column = node.left.ref.image, node.left.ref.column

    def compare(row: Row) -> Any:  # reads the row itself: one call less per change
        a = row.value(image, column)
        if a is None:
            return None
        if KINDS.get(type(a)) is not expected:
            if moment is not None and isinstance(a, date):
                return _compare_time(node, op, a, moment)
            _check_kind(node, a, expected)
        elif moment is not None and (beyond := _beyond(a)) is not None:
            return _compare_beyond(op, a, beyond, moment)
        try:
            return op(a, value)
        except (TypeError, ArithmeticError):
            raise _mismatch(node, kind_of(a), expected) from None

    return compare


def _compare_value(
    node: Compare,
    op: Callable[[Any, Any], Any],
    a: Any,
    value: Any,
    expected: Kind,
    *,
    moment: date | None,
) -> Any:
    if a is None:
        return None
    if moment is not None and isinstance(a, date):
        return _compare_time(node, op, a, moment)
    if moment is not None and (beyond := _beyond(a)) is not None:
        return _compare_beyond(op, a, beyond, moment)
    _check_kind(node, a, expected)
    try:
        return op(a, value)
    except (TypeError, ArithmeticError):
        raise _mismatch(node, kind_of(a), expected) from None


def _compare_time(
    node: Compare | InList, op: Callable[[Any, Any], Any], value: date, moment: date
) -> Any:
    """A timestamp or a date compared with a text literal read as a time: a
    time without an offset is in the value's own zone (the rulebook's timezone
    for a timestamp column, UTC for timestamptz), a date alone is its midnight."""
    if isinstance(value, datetime):
        if not isinstance(moment, datetime):
            moment = datetime.combine(moment, time())
        zone = value.tzinfo
        try:
            if moment.tzinfo is None and zone is not None:
                moment = wall_time(moment, zone)
            if moment.tzinfo is not None and zone is not None:
                # As instants: within one zone Python compares wall times, and a
                # wall time shown twice would equal both instants.
                value, moment = value.astimezone(UTC), moment.astimezone(UTC)
        except OverflowError:
            # The literal's instant is past an end of Python's calendar, which
            # every value held as a time is within (those past it stay text).
            return op(0, 1) if moment.year == MAXYEAR else op(1, 0)
    elif isinstance(moment, datetime):  # a date with a time of day
        raise _mismatch(node, Kind.DATE, Kind.TIMESTAMP)
    try:
        return op(value, moment)
    except TypeError:  # an offset beside a value without one
        raise _mismatch(node, kind_of(value), Kind.TEXT) from None


def _beyond(value: Any) -> int | None:
    """Where a time PostgreSQL writes but Python cannot hold (it stays text) lies
    against any time a literal can be: -1 before (-infinity, BC), 1 after
    (infinity, year 10000 on); None for any other value."""
    if type(value) is not str:
        return None
    if value == "infinity" or _LATE.match(value):
        return 1
    if value == "-infinity" or (value.endswith(" BC") and _EARLY.match(value)):
        return -1
    # A wall time whose instant is past either end (see values._timestamp_in);
    # beside a literal, see _compare_beyond.
    return _EDGES.get(value[:10])


def _compare_beyond(
    op: Callable[[Any, Any], Any], text: str, place: int, moment: date
) -> Any:
    """A time Python holds as text (see ``_beyond``) against a time literal.
    A wall time at an end of the calendar, text because its instant is past it
    in the column's zone, compares as a wall time with a literal without an
    offset, as SQL compares a timestamp column; any other such time lies before
    (``place`` -1) or after (1) every literal."""
    if getattr(moment, "tzinfo", None) is None and text[:10] in _EDGES:
        try:
            wall = datetime.fromisoformat(text)
        except ValueError:
            wall = None
        if wall is not None and wall.tzinfo is None:
            if not isinstance(moment, datetime):
                moment = datetime.combine(moment, time())
            return op(wall, moment)
    return op(place, 0)


def _ends_of_time(a: Any, b: Any) -> tuple[int, int] | None:
    """Where ``a`` and ``b`` lie against each other when one is a time Python
    cannot hold (text: ``infinity``, BC, year 10000 on) and the other a time it
    holds: (-1 or 1, 0) or (0, -1 or 1); None for anything else."""
    if isinstance(b, date):
        place = _beyond(a)
        return None if place is None else (place, 0)
    if isinstance(a, date):
        place = _beyond(b)
        return None if place is None else (0, place)
    return None


# The first and last days of Python's calendar, and where a wall time on them
# that stayed text lies.
_EDGES = {"9999-12-31": 1, "0001-01-01": -1}
_LATE = re.compile(r"[0-9]{5,}-[0-9]{2}-[0-9]{2}", re.ASCII)
_EARLY = re.compile(r"[0-9]{4,}-[0-9]{2}-[0-9]{2}", re.ASCII)


def _check_kind(node: Compare | InList, value: Any, expected: Kind) -> None:
    """Raise unless ``value`` (never None) may be compared with ``expected``."""
    subject = node.left if isinstance(node, Compare) else node.operand
    if value is MISSING and isinstance(subject, Col):
        raise MissingValue(subject.ref.column, subject.ref.image)
    kind = kind_of(value)
    if kind is not expected and kind is not ANY:
        raise _mismatch(node, kind, expected)


def _compile_in(node: InList) -> Fn:
    operand = _compile(node.operand)
    literals = [item.value for item in node.items if isinstance(item, Lit)]
    kinds = {kind_of(value) for value in literals}
    if len(literals) == len(node.items) and len(kinds) == 1 and None not in literals:
        return _in_literals(node, operand, frozenset(literals), kinds.pop())
    # Each item, and the time its text reads as when it is a literal (beside a
    # timestamp or a date it is compared as one, as with ==).
    items = tuple(
        (
            _compile(item),
            time_literal(item.value)
            if isinstance(item, Lit) and isinstance(item.value, str)
            else None,
        )
        for item in node.items
    )
    negated = node.negated

    def member(row: Row) -> bool | None:
        value = operand(row)
        if value is None:
            return None
        kind, unknown = kind_of(value), False
        for item, moment in items:
            candidate = item(row)
            if candidate is None:
                unknown = True
                continue
            if moment is not None and isinstance(value, date):
                if _compare_time(node, operator.eq, value, moment):
                    return not negated
                continue
            other = kind_of(candidate)
            if kind is not other and ANY not in (kind, other):
                if _ends_of_time(value, candidate) is not None:
                    continue  # a time past Python's calendar equals none held
                raise _mismatch(node, kind, other)
            try:
                if same_value(value, candidate):
                    return not negated
            except ArithmeticError:  # a signalling Decimal NaN
                raise _mismatch(node, kind, other) from None
        return None if unknown else negated

    return member


def _in_literals(
    node: InList, operand: Fn, values: frozenset[Any], expected: Kind
) -> Fn:
    """``x in (literals of one kind)``: a set lookup instead of a scan. Text
    literals that all read as times are compared as times with a timestamp or a
    date, as ``==`` compares them."""
    negated = node.negated
    moments = [time_literal(v) for v in values] if expected is Kind.TEXT else []
    times = [m for m in moments if m is not None]
    if len(times) < len(values):
        times = []

    def member(row: Row) -> bool | None:
        value = operand(row)
        if value is None:
            return None
        if KINDS.get(type(value)) is not expected:
            if times and isinstance(value, date):
                found = any(_compare_time(node, operator.eq, value, m) for m in times)
                return found is not negated
            _check_kind(node, value, expected)
        elif times and (place := _beyond(value)) is not None:
            eq = operator.eq
            found = any(_compare_beyond(eq, value, place, m) for m in times)
            return found is not negated
        try:
            return (value in values) is not negated
        except (TypeError, ArithmeticError):  # unhashable, or a signalling NaN
            raise _mismatch(node, kind_of(value), expected) from None

    return member


def _compile_is_null(node: IsNull) -> Fn:
    operand = _compile(node.operand)
    if node.negated:
        return lambda row: operand(row) is not None
    return lambda row: operand(row) is None


def _compile_call(node: Call) -> Fn:
    if node.name == "changed":
        return _compile_changed(node.args[0])  # type: ignore[arg-type]
    args = tuple(_compile(arg) for arg in node.args)
    if node.name == "coalesce":
        return _coalesce(args)
    if node.name == "concat":
        return _concat(args)
    if node.name == "string":
        (arg,) = args
        return lambda row: None if (value := arg(row)) is None else text_of(value)
    return _text_function(node, args[0], _TEXT_FUNCTIONS[node.name])


def _compile_changed(node: Col) -> Fn:
    column = node.ref.column

    def changed(row: Row) -> bool:
        new = row.value("new", column)
        if new is MISSING:  # an unchanged TOASTed value did not change
            return False
        old = row.value("old", column)
        if old is MISSING:
            raise MissingValue(column, "old")
        try:
            return not same_value(new, old)
        except ArithmeticError:  # a signalling Decimal NaN refuses comparison
            raise EvaluationError(
                f"changed() cannot compare the values of column '{column}'"
            ) from None

    return changed


def same_value(a: Any, b: Any) -> bool:
    """Equality as PostgreSQL sees it, where Python's differs: true is not 1 nor
    false 0, at any depth of a json value."""
    kind = type(a)
    if kind is type(b) and kind is not dict and kind is not list:
        return bool(a == b)
    if kind is bool or type(b) is bool:
        return False
    if kind is dict and type(b) is dict:
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if kind is list and type(b) is list:
        return len(a) == len(b) and all(map(same_value, a, b))
    return bool(a == b)


def _coalesce(args: tuple[Fn, ...]) -> Fn:
    def coalesce(row: Row) -> Any:
        for arg in args:
            value = arg(row)
            if value is not None:
                return value
        return None

    return coalesce


def _concat(args: tuple[Fn, ...]) -> Fn:
    def concat(row: Row) -> str:
        parts = [arg(row) for arg in args]
        return "".join("" if part is None else text_of(part) for part in parts)

    return concat


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_TEXT_FUNCTIONS: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "trim": str.strip,
    "sha256": _sha256,
}


def _text_function(node: Call, arg: Fn, transform: Callable[[str], str]) -> Fn:
    def apply(row: Row) -> str | None:
        value = arg(row)
        if value is None:
            return None
        if not isinstance(value, str):
            raise EvaluationError(
                f"{node.name}() expects text, got "
                f"{describe(node.args[0], kind_of(value))} at column {node.offset + 1}"
            )
        return transform(value)

    return apply


_COMPILERS: dict[type, Callable[[Any], Fn]] = {
    Lit: _compile_literal,
    Col: _compile_column,
    LookupCol: _compile_lookup_column,
    Not: _compile_not,
    BoolOp: _compile_bool_op,
    Compare: _compile_compare,
    InList: _compile_in,
    IsNull: _compile_is_null,
    Call: _compile_call,
}


def text_of(value: Any) -> str:
    """The text form of a value, as ``string()`` and ``concat()`` write it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return plain_text(value)  # keeps every digit and the scale: never 1E-9
    if isinstance(value, datetime):
        # As a payload writes it: 2024-05-01T12:30:00Z, not +00:00.
        return moment_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple | dict):
        try:
            return _json(value)
        except RecursionError:
            raise EvaluationError("a json value nests too deeply to write") from None
    return str(value)


def _json(value: Any) -> str:
    if isinstance(value, dict):
        pairs = (f"{_json(str(key))}:{_json(item)}" for key, item in value.items())
        return "{" + ",".join(pairs) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json(item) for item in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool | int | Decimal | float):
        return text_of(value)
    return json.dumps(text_of(value), ensure_ascii=False)


def _mismatch(node: Compare | InList, left: Kind, right: Kind) -> EvaluationError:
    subject = node.left if isinstance(node, Compare) else node.operand
    op = node.op if isinstance(node, Compare) else "in"
    return EvaluationError(
        f"'{op}' cannot compare {describe(subject, left)} with {right.value} "
        f"at column {node.offset + 1}"
    )


def _not_boolean(what: str, node: Node, value: Any) -> EvaluationError:
    return EvaluationError(
        f"{what} expects a boolean, got {describe(node, kind_of(value))} "
        f"at column {node.offset + 1}"
    )
