"""Kinds of values, and the static type check of an expression's tree.

``static_type(node, column_kind, known_columns, lookup_kind)`` works out the ``Kind``
an expression yields given each column's kind (from the live schema), or raises
``ExpressionError`` at the offending node: an unknown column (with a "did you mean"),
a comparison of text with a number, ``not`` of a text, ``lower()`` of a number. A
text literal compared with a timestamp or a date is read as a time, as in SQL.
``lookup_kind(lookup, column)`` does the same for columns of related rows; without it
they are ``ANY``. ``ANY`` is compatible with
every kind and ``NULL`` (a null literal) with every kind too.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from cdc_tracker.rules.expr_parse import (
    BoolOp,
    Call,
    Col,
    Compare,
    ExpressionError,
    InList,
    IsNull,
    Lit,
    LookupCol,
    Node,
    Not,
)

TEXT_FUNCTIONS = frozenset({"lower", "upper", "trim", "sha256"})


class Kind(Enum):
    """The type of a value, as far as expressions care."""

    TEXT = "text"
    NUMBER = "number"
    BOOL = "boolean"
    TIMESTAMP = "timestamp"
    DATE = "date"
    JSON = "json"
    ARRAY = "array"
    ANY = "any"
    NULL = "null"


TEXT, NUMBER, BOOL, ANY = Kind.TEXT, Kind.NUMBER, Kind.BOOL, Kind.ANY
# (lookup name, column) -> the column's kind, or None when the related table lacks it
LookupKind = Callable[[str, str], Kind | None]
# (column, lookup or None for the table's own) -> whether it orders as its text
TextOrdered = Callable[[str, "str | None"], bool]
KINDS: dict[type, Kind] = {
    str: TEXT,
    int: NUMBER,
    Decimal: NUMBER,
    float: NUMBER,
    bool: BOOL,
    datetime: Kind.TIMESTAMP,
    date: Kind.DATE,
    list: Kind.ARRAY,
    tuple: Kind.ARRAY,
    dict: Kind.JSON,
    type(None): Kind.NULL,
}


_SUBCLASSES: tuple[tuple[type | tuple[type, ...], Kind], ...] = (
    (bool, BOOL),
    ((int, Decimal, float), NUMBER),
    (str, TEXT),
    (datetime, Kind.TIMESTAMP),
    (date, Kind.DATE),
    ((list, tuple), Kind.ARRAY),
    (dict, Kind.JSON),
)


def kind_of(value: Any) -> Kind:
    """The ``Kind`` of a run-time value; ``ANY`` for types expressions do not know."""
    kind = KINDS.get(type(value))
    if kind is None:
        found = (kind for cls, kind in _SUBCLASSES if isinstance(value, cls))
        kind = next(found, ANY)
    return kind


def children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Not):
        return (node.operand,)
    if isinstance(node, BoolOp):
        return node.operands
    if isinstance(node, Compare):
        return (node.left, node.right)
    if isinstance(node, InList):
        return (node.operand, *node.items)
    if isinstance(node, IsNull):
        return (node.operand,)
    if isinstance(node, Call):
        return node.args
    return ()


def describe(node: Node, kind: Kind) -> str:
    if isinstance(node, Col):
        return f"{kind.value} (column {node.ref.column})"
    if isinstance(node, LookupCol):
        return f"{kind.value} (column {node.ref.lookup}.{node.ref.column})"
    return kind.value


def time_literal(text: str) -> datetime | date | None:
    """A text literal read as a time, as SQL reads ``'2026-01-01'`` beside a
    timestamp: an ISO 8601 date, or a date and a time of day with or without an
    offset. None when it is neither."""
    try:
        if _ISO_DATE.fullmatch(text):
            return date.fromisoformat(text)
        return datetime.fromisoformat(text) if _ISO_TIME.fullmatch(text) else None
    except ValueError:
        return None


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_ISO_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?",
    re.ASCII,
)
TIME_FORMS = "'2026-01-01' or '2026-01-01 09:30:00+02:00' (ISO 8601)"


def _reads_as_time(kind: Kind, other: Node) -> bool:
    """Whether ``other`` is a text literal beside a timestamp or a date (``kind``),
    so read as a time; raises when such a literal is no time there."""
    if kind not in (Kind.TIMESTAMP, Kind.DATE):
        return False
    if not (isinstance(other, Lit) and isinstance(other.value, str)):
        return False
    moment = time_literal(other.value)
    if moment is None:
        raise ExpressionError(
            f"'{other.value}' is not a time; write one as {TIME_FORMS}",
            other.offset,
        )
    if kind is Kind.DATE and isinstance(moment, datetime):
        raise ExpressionError(
            f"'{other.value}' is more than a date; a date compares with a date, "
            "as '2026-01-01'",
            other.offset,
        )
    return True


def _compatible(left: Kind, right: Kind) -> bool:
    return left is right or ANY in (left, right) or Kind.NULL in (left, right)


class _Typer:
    """Works out the kind of each node from the columns' kinds, or raises."""

    def __init__(
        self,
        column_kind: Callable[[str], Kind | None],
        known: tuple[str, ...],
        lookup_kind: LookupKind | None = None,
        text_ordered: TextOrdered | None = None,
    ) -> None:
        self.column_kind = column_kind
        self.known = known
        self.lookup_kind = lookup_kind
        self.text_ordered = text_ordered

    def kind(self, node: Node) -> Kind:
        if isinstance(node, Lit):
            return kind_of(node.value)
        if isinstance(node, Col):
            return self.column(node)
        if isinstance(node, LookupCol):
            return self.lookup_column(node)
        if isinstance(node, Not | BoolOp):
            for operand in children(node):
                self.boolean(operand, "not" if isinstance(node, Not) else node.op)
            return BOOL
        if isinstance(node, Compare | InList):
            self.comparable(node)
            return BOOL
        if isinstance(node, IsNull):
            self.kind(node.operand)
            return BOOL
        return self.call(node)

    def column(self, node: Col) -> Kind:
        kind = self.column_kind(node.ref.column)
        if kind is not None:
            return kind
        message = f"unknown column '{node.ref.column}'"
        close = difflib.get_close_matches(node.ref.column, self.known, n=1)
        if close:
            message += f"; did you mean '{close[0]}'?"
        raise ExpressionError(message, node.offset)

    def lookup_column(self, node: LookupCol) -> Kind:
        if self.lookup_kind is None:
            return ANY
        kind = self.lookup_kind(node.ref.lookup, node.ref.column)
        if kind is None:
            raise ExpressionError(
                f"unknown column '{node.ref.column}' in lookup '{node.ref.lookup}'",
                node.offset,
            )
        return kind

    def boolean(self, node: Node, what: str) -> None:
        kind = self.kind(node)
        if kind not in (BOOL, ANY, Kind.NULL):
            raise ExpressionError(
                f"'{what}' expects a boolean, got {describe(node, kind)}",
                node.offset,
            )

    def comparable(self, node: Compare | InList) -> None:
        subject = node.left if isinstance(node, Compare) else node.operand
        others = (node.right,) if isinstance(node, Compare) else node.items
        op = node.op if isinstance(node, Compare) else "in"
        left = self.kind(subject)
        for other in others:
            right = self.kind(other)
            if _reads_as_time(left, other) or (
                isinstance(node, Compare) and _reads_as_time(right, subject)
            ):
                continue
            if not _compatible(left, right):
                raise ExpressionError(
                    f"'{op}' cannot compare {describe(subject, left)} "
                    f"with {describe(other, right)}",
                    node.offset,
                )
        if op in ("<", "<=", ">", ">="):
            if Kind.JSON in (left, right):
                raise ExpressionError(f"'{op}' cannot order json values", node.offset)
            for side in (subject, *others):
                self.ordered_as_text(side, op)

    def ordered_as_text(self, node: Node, op: str) -> None:
        """Raise when ``node`` reads a column (its own, a lookup's, or one inside
        coalesce()) whose values are compared as the text PostgreSQL prints,
        which its type orders otherwise."""
        if self.text_ordered is None:
            return
        if isinstance(node, Call) and node.name == "coalesce":
            for arg in node.args:
                self.ordered_as_text(arg, op)
            return
        if isinstance(node, Col):
            name, lookup = node.ref.column, None
        elif isinstance(node, LookupCol):
            name, lookup = node.ref.column, node.ref.lookup
        else:
            return
        if self.kind(node) is not TEXT or self.text_ordered(name, lookup):
            return
        shown = name if lookup is None else f"{lookup}.{name}"
        raise ExpressionError(
            f"'{op}' would order column '{shown}' by the text PostgreSQL prints, "
            "not as its type orders it (an enum, an interval, a time of day, "
            "money...): compare it with == or in (...)",
            node.offset,
        )

    def call(self, node: Call) -> Kind:
        kinds = [self.kind(arg) for arg in node.args]
        if node.name == "changed":
            return BOOL
        if node.name == "coalesce":
            return self.common(node, kinds)
        if node.name in TEXT_FUNCTIONS and kinds[0] not in (TEXT, ANY, Kind.NULL):
            raise ExpressionError(
                f"{node.name}() expects text, got {describe(node.args[0], kinds[0])}",
                node.args[0].offset,
            )
        return TEXT

    def common(self, node: Call, kinds: list[Kind]) -> Kind:
        result = Kind.NULL
        for arg, kind in zip(node.args, kinds, strict=True):
            if not _compatible(result, kind):
                raise ExpressionError(
                    "coalesce() arguments must share a type, got "
                    f"{result.value} and {describe(arg, kind)}",
                    arg.offset,
                )
            if result in (Kind.NULL, ANY) and kind is not Kind.NULL:
                result = kind
        return result


def static_type(
    node: Node,
    column_kind: Callable[[str], Kind | None],
    known_columns: Iterable[str] = (),
    lookup_kind: LookupKind | None = None,
    text_ordered: TextOrdered | None = None,
) -> Kind:
    """The kind ``node`` yields; raises ``ExpressionError`` on a type error."""
    typer = _Typer(column_kind, tuple(known_columns), lookup_kind, text_ordered)
    return typer.kind(node)
