"""Tokenizer and parser of the rulebook's expression language.

``parse(text)`` turns an expression into a small tree of frozen nodes, or raises
``ExpressionError`` with the 0-based offset of the offending token. The grammar, from
loosest to tightest binding::

    expr    := and ('or' and)*
    and     := not ('and' not)*
    not     := 'not' not | test
    test    := primary [ cmp primary | ['not'] 'in' '(' expr (',' expr)* ')'
                       | 'is' ['not'] 'null' ]
    primary := literal | ['-'] number | column | name '(' [expr (',' expr)*] ')'
             | '(' expr ')'
    number  := digits ['.' [digits]] [exponent] | '.' digits [exponent]
    column  := name | "quoted name" | ('new' | 'old') '.' (name | "quoted name")
             | lookup '.' (name | "quoted name")

A dotted name whose prefix is not ``new`` or ``old`` reads a column of a related row
(``merchant.shop_domain``); the rulebook checks that the prefix names a lookup.

Nothing here evaluates anything: there is no attribute access, no arithmetic and no
way to reach Python objects; a call names one of ``FUNCTIONS`` or is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, NamedTuple

from cdc_tracker.errors import ConfigError
from cdc_tracker.exact_json import integer

Image = Literal["new", "old", "row"]

# name -> (fewest arguments, most arguments or None for no limit)
FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "changed": (1, 1),
    "coalesce": (1, None),
    "concat": (1, None),
    "lower": (1, 1),
    "sha256": (1, 1),
    "string": (1, 1),
    "trim": (1, 1),
    "upper": (1, 1),
}

KEYWORDS = frozenset({"and", "or", "not", "in", "is", "null", "true", "false"})
COMPARISONS = {"==": "==", "=": "==", "!=": "!=", "<>": "!=", "<": "<", "<=": "<="}
COMPARISONS |= {">": ">", ">=": ">="}

MAX_DEPTH = 64


class ExpressionError(ConfigError):
    """An expression that cannot be parsed or fails its static checks.

    ``offset`` is the 0-based index of the offending character in the expression's
    text; ``message`` says what is wrong without the location, which ``str()`` adds
    as a 1-based column.
    """

    def __init__(self, message: str, offset: int, *, hint: str | None = None) -> None:
        # The column goes with the problem, before any "; did you mean ...".
        problem, separator, more = message.partition("; ")
        super().__init__(
            f"{problem} at column {offset + 1}{separator}{more}", hint=hint
        )
        self.message = message
        self.offset = offset


@dataclass(frozen=True, slots=True)
class ColumnRef:
    """A column of the new image, the old image, or the row (new, or old on delete)."""

    image: Image
    column: str


@dataclass(frozen=True, slots=True)
class LookupRef:
    """A column of the related row a named lookup finds (``merchant.shop_domain``)."""

    lookup: str
    column: str


@dataclass(frozen=True, slots=True)
class Lit:
    value: Any
    offset: int


@dataclass(frozen=True, slots=True)
class Col:
    ref: ColumnRef
    offset: int


@dataclass(frozen=True, slots=True)
class LookupCol:
    ref: LookupRef
    offset: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node
    offset: int


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: Literal["and", "or"]
    operands: tuple[Node, ...]
    offset: int


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Node
    right: Node
    offset: int


@dataclass(frozen=True, slots=True)
class InList:
    operand: Node
    items: tuple[Node, ...]
    negated: bool
    offset: int


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Node
    negated: bool
    offset: int


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Node, ...]
    offset: int


Node = Lit | Col | LookupCol | Not | BoolOp | Compare | InList | IsNull | Call


class Token(NamedTuple):
    kind: Literal["number", "string", "name", "quoted", "keyword", "op", "end"]
    text: str
    offset: int

    def describe(self) -> str:
        return "end of expression" if self.kind == "end" else f"'{self.text}'"


_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<number>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<string>'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")*")
    | (?P<op><=|>=|==|!=|<>|[<>=(),.\-])
    """,
    re.VERBOSE | re.ASCII,
)


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens, ending with an ``end`` token."""
    tokens: list[Token] = []
    offset = 0
    while offset < len(text):
        match = _TOKEN.match(text, offset)
        if match is None:
            raise _bad_character(text, offset)
        kind = match.lastgroup
        if kind == "name" and match.group().lower() in KEYWORDS:
            kind = "keyword"
        if kind != "space":
            tokens.append(Token(kind, match.group(), offset))  # type: ignore[arg-type]
        offset = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _bad_character(text: str, offset: int) -> ExpressionError:
    char = text[offset]
    if char == "'":
        return ExpressionError("unterminated string", offset)
    if char == '"':
        return ExpressionError("unterminated quoted column name", offset)
    if text.startswith("||", offset):
        return ExpressionError(
            "'||' is not an operator here: join texts with concat(a, b), which "
            "reads a null as empty text",
            offset,
        )
    return ExpressionError(f"unexpected character {char!r}", offset)


def parse(text: str) -> Node:
    """Parse one expression; raise ``ExpressionError`` on any syntax problem."""
    parser = _Parser(tokenize(text))
    if parser.peek.kind == "end":
        raise ExpressionError("empty expression", 0)
    node = parser.expression()
    parser.expect_end()
    return node


class _Parser:
    """Recursive descent over a token list; ``depth`` bounds the recursion."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    @property
    def peek(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def at(self, kind: str, word: str) -> bool:
        token = self.peek
        return token.kind == kind and token.text.lower() == word

    def expect(self, kind: str, word: str) -> Token:
        if not self.at(kind, word):
            raise ExpressionError(
                f"expected '{word}', found {self.peek.describe()}", self.peek.offset
            )
        return self.advance()

    def expect_end(self) -> None:
        token = self.peek
        if token.kind == "end":
            return
        if token.kind == "op" and token.text in COMPARISONS:
            raise ExpressionError(
                "comparisons cannot be chained; join them with 'and'", token.offset
            )
        raise ExpressionError(f"unexpected {token.describe()}", token.offset)

    def enter(self, offset: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(f"expression nests deeper than {MAX_DEPTH}", offset)

    def expression(self) -> Node:
        return self.chain("or", self.conjunction)

    def conjunction(self) -> Node:
        return self.chain("and", self.negation)

    def chain(self, word: Literal["and", "or"], operand: Callable[[], Node]) -> Node:
        first: Node = operand()
        operands = [first]
        while self.at("keyword", word):
            self.advance()
            operands.append(operand())
        if len(operands) == 1:
            return first
        return BoolOp(word, tuple(operands), first.offset)

    def negation(self) -> Node:
        if not self.at("keyword", "not"):
            return self.test()
        token = self.advance()
        self.enter(token.offset)
        operand = self.negation()
        self.depth -= 1
        return Not(operand, token.offset)

    def test(self) -> Node:
        left = self.primary()
        token = self.peek
        if token.kind == "op" and token.text in COMPARISONS:
            self.advance()
            right = self.primary()
            _refuse_null_comparison(left, right, token)
            return Compare(COMPARISONS[token.text], left, right, token.offset)
        if self.at("keyword", "is"):
            self.advance()
            negated = self.at("keyword", "not")
            if negated:
                self.advance()
            self.expect("keyword", "null")
            return IsNull(left, negated, token.offset)
        negated = self.at("keyword", "not") and self.next_is("in")
        if not (negated or self.at("keyword", "in")):
            return left
        self.index += 2 if negated else 1
        return InList(left, self.arguments("in"), negated, token.offset)

    def next_is(self, word: str) -> bool:
        token = self.tokens[min(self.index + 1, len(self.tokens) - 1)]
        return token.kind == "keyword" and token.text.lower() == word

    def arguments(self, owner: str) -> tuple[Node, ...]:
        opening = self.expect("op", "(")
        self.enter(opening.offset)
        args: list[Node] = []
        if not (owner != "in" and self.at("op", ")")):
            args.append(self.expression())
            while self.at("op", ","):
                self.advance()
                args.append(self.expression())
        self.expect("op", ")")
        self.depth -= 1
        return tuple(args)

    def primary(self) -> Node:
        token = self.peek
        if token.kind == "op" and token.text == "(":
            self.advance()
            self.enter(token.offset)
            node = self.expression()
            self.expect("op", ")")
            self.depth -= 1
            return node
        if token.kind == "op" and token.text == "-":
            return self.negative_number()
        if token.kind in ("number", "string", "keyword"):
            return self.literal()
        if token.kind in ("name", "quoted"):
            return self.reference()
        raise ExpressionError(
            f"expected a value, found {token.describe()}", token.offset
        )

    def negative_number(self) -> Lit:
        sign = self.advance()
        token = self.peek
        if token.kind != "number":
            raise ExpressionError(
                "arithmetic is not supported; '-' may only precede a number",
                sign.offset,
            )
        self.advance()
        return Lit(-_number(token), sign.offset)

    def literal(self) -> Lit:
        token = self.advance()
        if token.kind == "number":
            return Lit(_number(token), token.offset)
        if token.kind == "string":
            return Lit(token.text[1:-1].replace("''", "'"), token.offset)
        word = token.text.lower()
        if word in ("true", "false", "null"):
            return Lit({"true": True, "false": False, "null": None}[word], token.offset)
        raise ExpressionError(f"expected a value, found '{token.text}'", token.offset)

    def reference(self) -> Node:
        token = self.advance()
        if token.kind == "name" and self.at("op", "("):
            return self.call(token)
        if not self.at("op", "."):
            return Col(ColumnRef("row", _column_name(token)), token.offset)
        if token.kind != "name":
            raise ExpressionError(
                "only new.<column>, old.<column> and <lookup>.<column> may use '.'",
                self.peek.offset,
            )
        prefix = token.text
        self.advance()
        name = self.peek
        if name.kind not in ("name", "quoted"):
            raise ExpressionError(
                f"expected a column name after '{prefix}.', found {name.describe()}",
                name.offset,
            )
        self.advance()
        column = _column_name(name)
        if prefix.lower() in ("new", "old"):
            image: Image = "new" if prefix.lower() == "new" else "old"
            return Col(ColumnRef(image, column), token.offset)
        return LookupCol(LookupRef(prefix, column), token.offset)

    def call(self, token: Token) -> Call:
        name = token.text.lower()
        if name not in FUNCTIONS:
            raise ExpressionError(
                f"unknown function '{token.text}'; known: {', '.join(FUNCTIONS)}",
                token.offset,
            )
        args = self.arguments(name)
        _check_arity(name, args, token.offset)
        if name == "changed" and not (
            isinstance(args[0], Col) and args[0].ref.image == "row"
        ):
            raise ExpressionError(
                "changed() takes a bare column name, such as changed(plan_name)",
                args[0].offset,
            )
        return Call(name, args, token.offset)


def _column_name(token: Token) -> str:
    if token.kind == "name":
        return token.text
    name = token.text[1:-1].replace('""', '"')
    if not name:
        raise ExpressionError("empty quoted column name", token.offset)
    return name


def _number(token: Token) -> int | Decimal:
    """A number as written: ``int`` when it is whole digits, else ``Decimal``
    (``2.50`` keeps its zero, ``1e3`` is ``Decimal('1E+3')``)."""
    text = token.text
    if text.isdigit():
        return integer(text)
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ExpressionError(
            f"{text} is beyond any decimal number", token.offset
        ) from None


def _check_arity(name: str, args: tuple[Node, ...], offset: int) -> None:
    fewest, most = FUNCTIONS[name]
    if len(args) < fewest or (most is not None and len(args) > most):
        wanted = f"{fewest}" if fewest == most else f"at least {fewest}"
        plural = "" if fewest == 1 else "s"
        raise ExpressionError(
            f"{name}() takes {wanted} argument{plural}, got {len(args)}", offset
        )


def _refuse_null_comparison(left: Node, right: Node, token: Token) -> None:
    for side in (left, right):
        if isinstance(side, Lit) and side.value is None:
            raise ExpressionError(
                f"'{token.text} null' is never true; use 'is null' or 'is not null'",
                token.offset,
            )
