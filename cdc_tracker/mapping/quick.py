"""Rule conditions read straight off a change's raw values, without a ``RowView``.

Most conditions compare columns of the text, integer, boolean and numeric types
with literals (``status == 'paid'``, ``changed(plan_name)``, ``old.ok and not
new.ok``). wal2json already gives those values as the general reader would
convert them, so ``quick_condition`` compiles such a condition a second time into
a function of the change's ``new``, ``old`` and ``types``. It answers only where it
is sure to give what the general reader gives (``True``, ``False`` or ``None``, as
SQL's three-valued logic says); anywhere else (a column the change does not carry,
a value that needs converting, a kind the comparison does not expect, an error to
explain) it answers ``UNSURE`` and the mapper asks the general reader, which
decides and explains as it always did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cdc_tracker.mapping.values import BOOLEAN, INTEGER, NUMBER, SAME
from cdc_tracker.rules.expr import Expression
from cdc_tracker.rules.expr_check import KINDS, kind_of, time_literal
from cdc_tracker.rules.expr_compile import MIRRORED, OPERATORS, same_value
from cdc_tracker.rules.expr_parse import (
    BoolOp,
    Call,
    Col,
    Compare,
    InList,
    IsNull,
    Lit,
    Node,
    Not,
)

UNSURE: Any = object()  # the general reader must decide

Row = dict[str, Any] | None
Quick = Callable[[Row, Row, dict[str, str]], Any]
Kinds = Callable[[str], int]  # a declared type -> its writer's kind (values.py)

# The kinds whose values wal2json gives as they are converted, unless as text.
_AS_GIVEN = frozenset({INTEGER, BOOLEAN, NUMBER})


def quick_condition(condition: Expression, kinds: Kinds) -> Quick | None:
    """A function of (new, old, types) giving the condition's value, or
    ``UNSURE``; None when the condition has a shape it does not read (a lookup,
    a function but ``changed``, a time literal, ...)."""
    try:
        return _compile(condition.node, kinds)
    except _Unsupported:
        return None


class _Unsupported(Exception):
    pass


def _compile(node: Node, kinds: Kinds) -> Quick:
    if isinstance(node, Col):
        return _column(node, kinds)
    if isinstance(node, Not):
        return _not(_compile(node.operand, kinds))
    if isinstance(node, BoolOp):
        return _bool_op(node.op, tuple(_compile(item, kinds) for item in node.operands))
    if isinstance(node, Compare):
        return _compare(node, kinds)
    if isinstance(node, InList):
        return _in(node, kinds)
    if isinstance(node, IsNull):
        return _is_null(_compile(node.operand, kinds), node.negated)
    if isinstance(node, Call) and node.name == "changed":
        (arg,) = node.args
        assert isinstance(arg, Col)
        return _changed(arg.ref.column, kinds)
    raise _Unsupported


def _reader(image: str, column: str, kinds: Kinds) -> Quick:
    """A column's value as ``RowView.value`` gives it, when the image carries it
    and it needs no converting; ``UNSURE`` otherwise."""

    def read(new: Row, old: Row, types: dict[str, str]) -> Any:
        source = old if image == "old" or (image == "row" and new is None) else new
        if source is None:
            return UNSURE
        raw = source.get(column, UNSURE)
        if raw is None or raw is UNSURE:
            return raw
        declared = types.get(column)
        if declared is None:
            return UNSURE
        kind = kinds(declared)
        if kind == SAME or (kind in _AS_GIVEN and type(raw) is not str):
            return raw
        return UNSURE

    return read


def _column(node: Col, kinds: Kinds) -> Quick:
    return _reader(node.ref.image, node.ref.column, kinds)


def _not(operand: Quick) -> Quick:
    def negate(new: Row, old: Row, types: dict[str, str]) -> Any:
        value = operand(new, old, types)
        if value is True or value is False:
            return not value
        return None if value is None else UNSURE

    return negate


def _bool_op(op: str, operands: tuple[Quick, ...]) -> Quick:
    decisive = op == "or"  # the value that settles the result on its own
    neutral = not decisive

    def combine(new: Row, old: Row, types: dict[str, str]) -> Any:
        unknown = False
        for operand in operands:
            value = operand(new, old, types)
            if value is decisive:
                return decisive
            if value is None:
                unknown = True
            elif value is not neutral:
                return UNSURE
        return None if unknown else neutral

    return combine


def _literal(node: Node) -> Any:
    """A literal the quick comparisons take: not null, not a text read as a time
    (those compare as times beside a timestamp)."""
    if not isinstance(node, Lit) or node.value is None:
        raise _Unsupported
    if isinstance(node.value, str) and time_literal(node.value) is not None:
        raise _Unsupported
    return node.value


def _compare(node: Compare, kinds: Kinds) -> Quick:
    left, right, op_name = node.left, node.right, node.op
    if isinstance(left, Lit):
        left, right, op_name = right, left, MIRRORED[op_name]
    if not isinstance(left, Col):
        raise _Unsupported
    value = _literal(right)
    expected = kind_of(value)
    op = OPERATORS[op_name]
    read = _column(left, kinds)

    def compare(new: Row, old: Row, types: dict[str, str]) -> Any:
        a = read(new, old, types)
        if a is None or a is UNSURE:
            return a
        if KINDS.get(type(a)) is not expected:
            return UNSURE
        try:
            return op(a, value)
        except (TypeError, ArithmeticError):
            return UNSURE

    return compare


def _in(node: InList, kinds: Kinds) -> Quick:
    if not isinstance(node.operand, Col):
        raise _Unsupported
    literals = [_literal(item) for item in node.items]
    found_kinds = {kind_of(value) for value in literals}
    if len(found_kinds) != 1:
        raise _Unsupported
    (expected,) = found_kinds
    values = frozenset(literals)
    negated = node.negated
    read = _column(node.operand, kinds)

    def member(new: Row, old: Row, types: dict[str, str]) -> Any:
        a = read(new, old, types)
        if a is None or a is UNSURE:
            return a
        if KINDS.get(type(a)) is not expected:
            return UNSURE
        try:
            return (a in values) is not negated
        except (TypeError, ArithmeticError):
            return UNSURE

    return member


def _is_null(operand: Quick, negated: bool) -> Quick:
    def is_null(new: Row, old: Row, types: dict[str, str]) -> Any:
        value = operand(new, old, types)
        if value is UNSURE:
            return UNSURE
        return (value is None) is not negated

    return is_null


def _changed(column: str, kinds: Kinds) -> Quick:
    read_new = _reader("new", column, kinds)
    read_old = _reader("old", column, kinds)

    def changed(new: Row, old: Row, types: dict[str, str]) -> Any:
        a = read_new(new, old, types)
        if a is UNSURE:
            return UNSURE
        b = read_old(new, old, types)
        if b is UNSURE:
            return UNSURE
        try:
            return not same_value(a, b)
        except ArithmeticError:
            return UNSURE

    return changed
