"""Expressions of the rulebook, compiled once into Python closures.

``parse_expression(text)`` parses (grammar in ``expr_parse``) and compiles an
expression; ``Expression.evaluate(row)`` runs it against one row change with SQL's
three-valued logic: a comparison with null is null, ``not null`` is null, and
``and``/``or`` follow SQL's truth tables. Errors::

    ExpressionError     (a ConfigError) the text is not a valid expression, or
                        ``static_type`` found a type error; carries ``offset``
    EvaluationError     a run-time problem, such as comparing text with a number;
                        the mapping turns it into a dead letter
    +-- MissingValue    the expression needs a column the change does not carry
                        (an unchanged TOASTed value); carries ``column``

A column the change does not carry reads as ``MISSING``: an expression that is exactly
one column returns it as is (the caller leaves the trait out), ``changed(col)`` is
false when the new value is missing, and any other use raises ``MissingValue``.
Messages name columns and positions, never values.

This module is the public face; the work is done by ``expr_parse`` (text to tree),
``expr_check`` (kinds and the static type check) and ``expr_compile`` (tree to
closures, run-time errors).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from cdc_tracker.rules.expr_check import (
    Kind,
    LookupKind,
    TextOrdered,
    children,
    kind_of,
    static_type,
)
from cdc_tracker.rules.expr_compile import (
    EvaluationError,
    MissingValue,
    Row,
    compile_expression,
    text_of,
)
from cdc_tracker.rules.expr_parse import (
    Call,
    Col,
    ColumnRef,
    ExpressionError,
    Image,
    Lit,
    LookupCol,
    LookupRef,
    Node,
    parse,
)

__all__ = [
    "ColumnRef",
    "EvaluationError",
    "Expression",
    "ExpressionError",
    "Image",
    "Kind",
    "LookupRef",
    "MissingValue",
    "Row",
    "literal",
    "parse_expression",
]


class Expression:
    """A parsed, compiled expression. Immutable, and safe to share between threads.

    ``columns`` lists every column of the changed row it reads; ``lookups`` every
    column of a related row (``merchant.plan_name``); ``needs_old`` tells whether it
    reads the old image (``old.x`` or ``changed``); ``is_column`` is the reference when
    the whole expression is one column (so ``MISSING`` means "leave it out").
    """

    __slots__ = (
        "_fn",
        "_node",
        "columns",
        "is_column",
        "is_literal",
        "lookups",
        "needs_old",
        "text",
    )

    def __init__(self, text: str, node: Node) -> None:
        self.text = text
        self._node = node
        self.columns = frozenset(_columns(node))
        self.lookups = frozenset(_lookups(node))
        self.needs_old = any(ref.image == "old" for ref in self.columns)
        self.is_column = node.ref if isinstance(node, Col) else None
        self.is_literal = isinstance(node, Lit)
        self._fn = compile_expression(node)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    @property
    def node(self) -> Node:
        """The parsed tree (``cdc_tracker.mapping.quick`` compiles it again)."""
        return self._node

    @property
    def constant(self) -> Any:
        """The value of a literal (``is_literal``): what ``evaluate`` always gives."""
        if not isinstance(self._node, Lit):
            raise TypeError(f"{self.text!r} is not a literal")
        return self._node.value

    def evaluate(self, row: Row) -> Any:
        """The value for ``row``: None, bool, int, Decimal, str, ... or ``MISSING``.

        Raises ``EvaluationError`` (``MissingValue`` when a needed column is absent).
        """
        return self._fn(row)

    def holds(self, row: Row) -> bool:
        """Whether a ``when`` condition is true; null counts as false."""
        return self._fn(row) is True

    def static_type(
        self,
        column_kind: Callable[[str], Kind | None],
        *,
        known_columns: Iterable[str] = (),
        lookup_kind: LookupKind | None = None,
        text_ordered: TextOrdered | None = None,
    ) -> Kind:
        """The expression's result kind, given each column's kind.

        ``column_kind`` returns None for a column the table lacks; ``known_columns``
        (optional) feeds the "did you mean" hint; ``lookup_kind(lookup, column)``
        does the same for related rows (without it their columns are ``ANY``);
        ``text_ordered(column)`` says whether a text column's type orders its
        values as their text does (an enum or an interval does not: ``<`` on it
        is refused). Raises ``ExpressionError`` on an unknown column or a type
        error. ``ANY`` is compatible with every kind.
        """
        return static_type(
            self._node, column_kind, known_columns, lookup_kind, text_ordered
        )


def parse_expression(text: str) -> Expression:
    """Parse and compile ``text``; raise ``ExpressionError`` if it is not valid."""
    return Expression(text, parse(text))


def literal(value: Any) -> Expression:
    """An expression that always yields ``value`` (a non-string YAML scalar).

    A float becomes the ``Decimal`` of its shortest repr; a collection, or a float
    that is not finite, raises ``ExpressionError``.
    """
    if isinstance(value, float):
        value = Decimal(repr(value))
        if not value.is_finite():
            raise ExpressionError("a number literal must be finite", 0)
    if kind_of(value) in (Kind.ARRAY, Kind.JSON, Kind.ANY):
        raise ExpressionError(f"expected a scalar, got {type(value).__name__}", 0)
    text = "null" if value is None else text_of(value)
    return Expression(text, Lit(value, 0))


def _columns(node: Node) -> Iterable[ColumnRef]:
    if isinstance(node, Col):
        yield node.ref
    elif isinstance(node, Call) and node.name == "changed":
        column = node.args[0].ref.column  # type: ignore[union-attr]
        yield from (ColumnRef("new", column), ColumnRef("old", column))
    else:
        for child in children(node):
            yield from _columns(child)


def _lookups(node: Node) -> Iterable[LookupRef]:
    if isinstance(node, LookupCol):
        yield node.ref
    for child in children(node):
        yield from _lookups(child)
