"""The rulebook's expression language: parsing, evaluation, MISSING, static types."""

from __future__ import annotations

import contextlib
import hashlib
import random
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cdc_tracker.errors import CdcTrackerError, ConfigError
from cdc_tracker.model import MISSING
from cdc_tracker.rules.expr import (
    ColumnRef,
    EvaluationError,
    ExpressionError,
    Kind,
    MissingValue,
    literal,
    parse_expression,
)


class FakeRow:
    """A row change: ``row`` reads the new image, or the old one for a delete."""

    def __init__(
        self,
        new: dict[str, Any] | None = None,
        old: dict[str, Any] | None = None,
        *,
        deleted: bool = False,
    ) -> None:
        self.images = {"new": new or {}, "old": old or {}}
        self.images["row"] = self.images["old" if deleted else "new"]

    def value(self, image: str, column: str) -> Any:
        return self.images[image].get(column, MISSING)

    def lookup(self, name: str, column: str) -> Any:
        """Related rows are the lookup's own business: none here."""
        raise EvaluationError(f"no lookup '{name}' in this test")


def evaluate(text: str, new: dict[str, Any] | None = None, **old: Any) -> Any:
    return parse_expression(text).evaluate(FakeRow(new, old))


PAID = {"status": "paid", "amount": Decimal("12.50"), "count": 3, "ok": True}

EVALUATIONS = [
    ("status == 'paid'", PAID, True),
    ("status = 'paid'", PAID, True),
    ("status != 'paid'", PAID, False),
    ("status <> 'paid'", PAID, False),
    ("amount > 12", PAID, True),
    ("amount >= 12.50", PAID, True),
    ("amount < 12.5", PAID, False),
    ("amount <= -1", PAID, False),
    ("count == 3.0", PAID, True),
    ("amount == 1.25e1", PAID, True),
    ("amount == 1250E-2", PAID, True),
    ("amount > 1e+1", PAID, True),
    ("amount < 1e2", PAID, True),
    ("count > .5", PAID, True),
    ("count > -.5", PAID, True),
    ("count == 3.", PAID, True),
    ("string(1e3)", {}, "1000"),
    ("count < amount", PAID, True),
    ("'a' < 'b'", {}, True),
    ("ok", PAID, True),
    ("ok == true", PAID, True),
    ("not ok", PAID, False),
    ("status in ('new', 'paid')", PAID, True),
    ("status not in ('new', 'paid')", PAID, False),
    ("count in (1, 2)", PAID, False),
    ("count in (3.00)", PAID, True),
    ("amount in (1, 12.5)", PAID, True),
    ("amount not in (1, 12.5)", PAID, False),
    ("'x' in ('x', 'y')", {}, True),
    ("status in (lower('PAID'), 'y')", PAID, True),
    ("lower(status) == 'paid'", PAID, True),
    ("upper(status) < 'PAIE'", PAID, True),
    ("status is null", PAID, False),
    ("status is not null", PAID, True),
    ("missing_col is null", {"missing_col": None}, True),
    ("(status == 'paid' or ok) and count > 2", PAID, True),
    ("status == 'x' or status == 'paid' and not ok", PAID, False),
    ("not status == 'x'", PAID, True),
    ("STATUS", {"STATUS": 1}, 1),
    ('"Mixed Case"', {"Mixed Case": "v"}, "v"),
    ('"say ""hi"""', {'say "hi"': 1}, 1),
    ("'it''s'", {}, "it's"),
    ("''", {}, ""),
    ("007", {}, 7),
    ("1.10", {}, Decimal("1.10")),
    ("-2.5", {}, Decimal("-2.5")),
    ("NULL", {}, None),
    ("True", {}, True),
    ("FALSE", {}, False),
    ("status IS NOT NULL AND ok IN (true)", PAID, True),
    ("new.status", PAID, "paid"),
    ("lower('MiXed')", {}, "mixed"),
    ("upper(status)", PAID, "PAID"),
    ("trim('  padded \t')", {}, "padded"),
    ("concat(status, '-', count, '-', amount)", PAID, "paid-3-12.50"),
    ("concat(nothing, 'x', ok)", {"nothing": None, "ok": False}, "xfalse"),
    ("coalesce(nothing, status)", {"nothing": None, "status": "s"}, "s"),
    ("coalesce(nothing, null)", {"nothing": None}, None),
    ("string(count)", PAID, "3"),
    ("string(nothing)", {"nothing": None}, None),
    ("sha256(nothing)", {"nothing": None}, None),
    ("lower(nothing)", {"nothing": None}, None),
    ("sha256('a@b.c')", {}, hashlib.sha256(b"a@b.c").hexdigest()),
    (
        "SHA256(lower(trim(email)))",
        {"email": " Ä@B.c "},
        hashlib.sha256("ä@b.c".encode()).hexdigest(),
    ),
]


@pytest.mark.parametrize(("text", "new", "expected"), EVALUATIONS)
def test_expression_evaluates_to_expected_value(
    text: str, new: dict[str, Any], expected: Any
) -> None:
    result = evaluate(text, new)
    assert result == expected
    assert type(result) is type(expected)


def test_old_and_new_images_are_read_separately() -> None:
    row = FakeRow({"ok": False, "plan": "pro"}, {"ok": True, "plan": "free"})
    lost = parse_expression("old.ok and not new.ok")
    assert lost.evaluate(row) is True
    assert parse_expression("concat(old.plan, '>', new.plan)").evaluate(row) == (
        "free>pro"
    )


def test_bare_column_reads_old_image_of_a_delete() -> None:
    row = FakeRow(None, {"plan": "free"}, deleted=True)
    assert parse_expression("plan").evaluate(row) == "free"


# SQL's truth tables: T, F and N(ull) for every pair.
T, F, N = True, False, None
AND_TABLE = [(T, T, T), (T, F, F), (T, N, N), (F, T, F), (F, F, F), (F, N, F)]
AND_TABLE += [(N, T, N), (N, F, F), (N, N, N)]
OR_TABLE = [(T, T, T), (T, F, T), (T, N, T), (F, T, T), (F, F, F), (F, N, N)]
OR_TABLE += [(N, T, T), (N, F, N), (N, N, N)]


@pytest.mark.parametrize(("a", "b", "expected"), AND_TABLE)
def test_and_follows_sql_truth_table(a: Any, b: Any, expected: Any) -> None:
    assert evaluate("a and b", {"a": a, "b": b}) is expected


@pytest.mark.parametrize(("a", "b", "expected"), OR_TABLE)
def test_or_follows_sql_truth_table(a: Any, b: Any, expected: Any) -> None:
    assert evaluate("a or b", {"a": a, "b": b}) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not a", None),
        ("a == 1", None),
        ("1 != a", None),
        ("a < 'x'", None),
        ("a in (1, 2)", None),
        ("a not in (1)", None),
        ("1 in (2, a)", None),
        ("1 not in (2, a)", None),
        ("1 in (1, a)", True),
        ("1 not in (1, a)", False),
        ("a and b and c", None),
        ("a or b or c", True),
        ("a is null", True),
    ],
)
def test_null_propagates_like_sql(text: str, expected: Any) -> None:
    assert evaluate(text, {"a": None, "b": True, "c": None}) is expected


def test_holds_treats_null_as_false() -> None:
    when = parse_expression("a == 1")
    assert when.holds(FakeRow({"a": None})) is False
    assert when.holds(FakeRow({"a": 1})) is True
    assert when.holds(FakeRow({"a": 2})) is False


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (1, Decimal("1.0"), True),
        (2, Decimal("1.99"), False),
        (10**30, Decimal(1), False),
        (Decimal("0.1"), 0, False),
        (Decimal("-0"), 0, True),
    ],
)
def test_int_and_decimal_compare_by_value(
    left: Any, right: Any, expected: bool
) -> None:
    assert evaluate("a == b", {"a": left, "b": right}) is expected
    assert evaluate("a > b", {"a": left, "b": right}) is (left > right)


@pytest.mark.parametrize(
    ("text", "values", "fragment"),
    [
        ("a == b", {"a": "secret-1", "b": 5}, "'==' cannot compare text (column a)"),
        ("a < 5", {"a": "secret-1"}, "'<' cannot compare text (column a)"),
        ("a == true", {"a": 1}, "number (column a) with boolean"),
        ("a > b", {"a": {"k": 1}, "b": {"k": 2}}, "cannot compare json"),
        (
            "a < b",
            {"a": datetime(2024, 1, 1), "b": datetime(2024, 1, 1, tzinfo=UTC)},
            "",
        ),
        ("a == b", {"a": date(2024, 1, 1), "b": datetime(2024, 1, 1, tzinfo=UTC)}, ""),
        ("a in ('x', 2)", {"a": "secret-1"}, "'in' cannot compare text (column a)"),
        ("not a", {"a": "secret-1"}, "'not' expects a boolean, got text (column a)"),
        ("a and true", {"a": 1}, "'and' expects a boolean, got number (column a)"),
        ("false or a", {"a": "secret-1"}, "'or' expects a boolean, got text"),
        ("lower(a)", {"a": 5}, "lower() expects text, got number (column a)"),
        ("sha256(a)", {"a": ["secret-1"]}, "sha256() expects text, got array"),
        ("trim(a)", {"a": True}, "trim() expects text, got boolean"),
        (
            "a in (1, 2)",
            {"a": True},
            "'in' cannot compare boolean (column a) with number",
        ),
        ("a not in ('x')", {"a": 0}, "'in' cannot compare number (column a) with text"),
        ("coalesce(a, 'x') == 5", {"a": "secret-1"}, "'==' cannot compare text with"),
        ("string(a) > 5", {"a": "secret-1"}, "'>' cannot compare text with number"),
    ],
)
def test_runtime_type_mismatch_raises_evaluation_error_without_values(
    text: str, values: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(EvaluationError) as caught:
        evaluate(text, values)
    assert fragment in str(caught.value)
    assert "secret" not in str(caught.value)
    assert "at column" in str(caught.value)


def test_errors_belong_to_the_one_exception_tree() -> None:
    assert issubclass(ExpressionError, ConfigError)
    assert issubclass(EvaluationError, CdcTrackerError)
    assert issubclass(MissingValue, EvaluationError)


# --- MISSING: a column the change does not carry ---


def test_expression_that_is_one_column_returns_missing_as_is() -> None:
    assert evaluate("notes", {}) is MISSING
    assert evaluate("new.notes", {}) is MISSING
    assert evaluate("old.notes", {}) is MISSING


@pytest.mark.parametrize(
    "text",
    [
        "notes == 'x'",
        "notes is null",
        "not notes",
        "lower(notes)",
        "concat(notes)",
        "coalesce(notes, 'x')",
        "notes in ('x')",
        "'x' in (notes)",
        "string(notes)",
        "true and notes",
        "sha256(notes)",
        "old.notes is not null",
    ],
)
def test_any_other_use_of_missing_raises_missing_value(text: str) -> None:
    with pytest.raises(MissingValue) as caught:
        evaluate(text, {})
    assert caught.value.column == "notes"


def test_changed_is_false_when_new_value_is_missing() -> None:
    assert evaluate("changed(notes)", {}, notes="old text") is False


def test_changed_raises_missing_value_when_old_value_is_missing() -> None:
    with pytest.raises(MissingValue) as caught:
        evaluate("changed(notes)", {"notes": "new text"})
    assert caught.value.column == "notes"
    assert caught.value.image == "old"


@pytest.mark.parametrize(
    ("new", "old", "expected"),
    [
        ("a", "a", False),
        ("a", "b", True),
        (None, None, False),
        (None, "a", True),
        ("a", None, True),
        (1, Decimal("1.0"), False),
        ({"k": [1]}, {"k": [1]}, False),
        # json: true is not 1, nor false 0, at any depth (Python says they are)
        ({"beta": True}, {"beta": 1}, True),
        ([False], [0], True),
        (True, 1, True),
        ({"k": [1, {"a": True}]}, {"k": [1, {"a": True}]}, False),
    ],
)
def test_changed_compares_new_with_old_like_is_distinct_from(
    new: Any, old: Any, expected: bool
) -> None:
    assert evaluate("changed(x)", {"x": new}, x=old) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [({"beta": True}, {"beta": 1}, False), ({"k": [1]}, {"k": [1]}, True)],
)
def test_json_values_are_equal_as_postgresql_says(
    a: Any, b: Any, expected: bool
) -> None:
    assert evaluate("a == b", {"a": a, "b": b}) is expected
    assert evaluate("a != b", {"a": a, "b": b}) is not expected


@pytest.mark.parametrize(
    "text", ["changed(a)", "a == b", "a < 1", "a in (1, 2)", "a in (1, b)"]
)
def test_signalling_nan_raises_evaluation_error_not_decimal_error(text: str) -> None:
    with pytest.raises(EvaluationError):
        evaluate(text, {"a": Decimal("sNaN"), "b": 1}, a=1)


def test_short_circuit_skips_operands_that_would_be_missing() -> None:
    assert evaluate("ok or notes == 'x'", {"ok": True}) is True
    assert evaluate("ok and notes == 'x'", {"ok": False}) is False


# --- string() and concat() text forms ---


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1E-9"), "0.000000001"),
        (Decimal("4.10"), "4.10"),
        (Decimal("98765432109876543210.000000001"), "98765432109876543210.000000001"),
        (10**25, "10000000000000000000000000"),
        (True, "true"),
        ("é", "é"),
        (datetime(2024, 5, 1, 12, 30, tzinfo=UTC), "2024-05-01T12:30:00Z"),
        (
            datetime(2024, 5, 1, 12, 30, 0, 1500, tzinfo=UTC),
            "2024-05-01T12:30:00.001500Z",
        ),
        (
            datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=2))),
            "2024-05-01T12:30:00+02:00",
        ),
        (date(2024, 5, 1), "2024-05-01"),
        ({"a": [1, Decimal("2.50"), None, 'x"y']}, '{"a":[1,2.50,null,"x\\"y"]}'),
        ([True, {"é": False}], '[true,{"é":false}]'),
    ],
)
def test_string_writes_every_digit_and_a_stable_form(value: Any, text: str) -> None:
    assert evaluate("string(v)", {"v": value}) == text
    assert evaluate("concat('', v)", {"v": value}) == text


# --- parse errors ---


@pytest.mark.parametrize(
    ("text", "offset", "message"),
    [
        ("", 0, "empty expression"),
        ("   ", 0, "empty expression"),
        ("lower(status", 12, "expected ')', found end of expression"),
        ("status == ", 10, "expected a value, found end of expression"),
        ("status == 'paid", 10, "unterminated string"),
        ('"open', 0, "unterminated quoted column name"),
        ('""', 0, "empty quoted column name"),
        ("a == b == c", 7, "comparisons cannot be chained; join them with 'and'"),
        ("a b", 2, "unexpected 'b'"),
        ("a not b", 2, "unexpected 'not'"),
        ("a $ b", 2, "unexpected character '$'"),
        ("a ! b", 2, "unexpected character '!'"),
        ("a is 5", 5, "expected 'null', found '5'"),
        ("a in 'x'", 5, "expected '(', found ''x''"),
        ("a in ()", 6, "expected a value, found ')'"),
        ("(a", 2, "expected ')', found end of expression"),
        ("a)", 1, "unexpected ')'"),
        ("lowr(a)", 0, "unknown function 'lowr'; known: changed, coalesce, concat,"),
        ("lower(a, b)", 0, "lower() takes 1 argument, got 2"),
        ("concat()", 0, "concat() takes at least 1 argument, got 0"),
        ("changed(new.x)", 8, "changed() takes a bare column name"),
        ("changed('x')", 8, "changed() takes a bare column name"),
        ("a == null", 2, "'== null' is never true; use 'is null'"),
        ("null <> a", 5, "'<> null' is never true"),
        ("a + 1", 2, "unexpected character '+'"),
        ("'u' || id", 4, "'||' is not an operator here: join texts with concat"),
        ("-a", 0, "arithmetic is not supported"),
        ("1e", 1, "unexpected 'e'"),
        ("1e+", 2, "unexpected character '+'"),
        ("1e99999999999999999999", 0, "1e99999999999999999999 is beyond any decimal"),
        ("x > -1e99999999999999999999", 5, "1e99999999999999999999 is beyond any"),
        ("x.5", 1, "unexpected '.5'"),
        ('"x".y', 3, "only new.<column>, old.<column> and <lookup>.<column>"),
        ("new.x.y", 5, "unexpected '.'"),
        ("new.", 4, "expected a column name after 'new.', found end of expression"),
        ("old.(a)", 4, "expected a column name after 'old.'"),
        ("and", 0, "expected a value, found 'and'"),
        ("not", 3, "expected a value, found end of expression"),
        ("a = 'é' and b = ☃", 16, "unexpected character '☃'"),
    ],
)
def test_syntax_error_names_token_and_offset(
    text: str, offset: int, message: str
) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text)
    assert caught.value.message.startswith(message)
    assert caught.value.offset == offset
    problem, separator, more = caught.value.message.partition("; ")
    assert str(caught.value) == f"{problem} at column {offset + 1}{separator}{more}"


def test_unknown_function_lists_every_known_one() -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression("status == lowr(x)")
    assert caught.value.message == (
        "unknown function 'lowr'; known: changed, coalesce, concat, lower, sha256, "
        "string, trim, upper"
    )
    assert caught.value.offset == 10


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "eval('1')",
        "exec('x = 1')",
        "getattr(x, 'y')",
        "status.__class__.__mro__",
        "new.__dict__.x",
        "open('/etc/passwd')",
        "[1, 2]",
        "{'a': 1}",
        "lambda: 1",
        "x[0]",
        "f'{x}'",
    ],
)
def test_python_constructs_are_syntax_errors(text: str) -> None:
    with pytest.raises(ExpressionError):
        parse_expression(text)


def test_deep_nesting_is_an_expression_error_not_a_crash() -> None:
    for text in ["(" * 5000 + "a" + ")" * 5000, "not " * 5000 + "a", "lower(" * 500]:
        with pytest.raises(ExpressionError) as caught:
            parse_expression(text)
        assert "nests deeper than 64" in caught.value.message


def test_long_and_chain_compiles_and_evaluates() -> None:
    text = " and ".join(f"c{i} == {i}" for i in range(3000))
    values = {f"c{i}": i for i in range(3000)}
    assert evaluate(text, values) is True


# --- the expression's description of itself ---


def test_expression_reports_columns_it_reads() -> None:
    expression = parse_expression("old.a == new.b and changed(c) or d is null")
    assert expression.columns == {
        ColumnRef("old", "a"),
        ColumnRef("new", "b"),
        ColumnRef("new", "c"),
        ColumnRef("old", "c"),
        ColumnRef("row", "d"),
    }
    assert expression.needs_old is True
    assert expression.is_column is None
    assert expression.is_literal is False


@pytest.mark.parametrize(
    ("text", "needs_old", "is_column", "is_literal"),
    [
        ("plan", False, ColumnRef("row", "plan"), False),
        ("(new.plan)", False, ColumnRef("new", "plan"), False),
        ("old.plan", True, ColumnRef("old", "plan"), False),
        ("changed(plan)", True, None, False),
        ("'shopify'", False, None, True),
        ("lower(plan)", False, None, False),
    ],
)
def test_expression_knows_its_shape(
    text: str, needs_old: bool, is_column: ColumnRef | None, is_literal: bool
) -> None:
    expression = parse_expression(text)
    assert expression.needs_old is needs_old
    assert expression.is_column == is_column
    assert expression.is_literal is is_literal
    assert expression.text == text


@pytest.mark.parametrize(
    ("value", "expected", "text"),
    [
        (5, 5, "5"),
        (True, True, "true"),
        (None, None, "null"),
        (1.5, Decimal("1.5"), "1.5"),
        (0.1, Decimal("0.1"), "0.1"),
        (date(2024, 1, 2), date(2024, 1, 2), "2024-01-02"),
    ],
)
def test_literal_wraps_yaml_scalars(value: Any, expected: Any, text: str) -> None:
    expression = literal(value)
    result = expression.evaluate(FakeRow())
    assert result == expected
    assert type(result) is type(expected)
    assert expression.is_literal
    assert expression.columns == frozenset()
    assert expression.text == text


def test_literal_refuses_collections() -> None:
    with pytest.raises(ExpressionError, match="expected a scalar, got list"):
        literal([1])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_literal_refuses_numbers_that_are_not_finite(value: float) -> None:
    with pytest.raises(ExpressionError, match="a number literal must be finite"):
        literal(value)


# --- static typing against the live schema ---

KINDS = {
    "plan_name": Kind.TEXT,
    "amount": Kind.NUMBER,
    "ok": Kind.BOOL,
    "paid_at": Kind.TIMESTAMP,
    "born": Kind.DATE,
    "meta": Kind.JSON,
    "tags": Kind.ARRAY,
    "custom": Kind.ANY,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plan_name", Kind.TEXT),
        ("old.amount", Kind.NUMBER),
        ("'x'", Kind.TEXT),
        ("null", Kind.NULL),
        ("1.5", Kind.NUMBER),
        ("plan_name == 'pro' and amount > 1.5", Kind.BOOL),
        ("not ok or custom", Kind.BOOL),
        ("custom == 5 and custom == 'x'", Kind.BOOL),
        ("paid_at is null", Kind.BOOL),
        ("plan_name in ('a', null, custom)", Kind.BOOL),
        ("changed(meta)", Kind.BOOL),
        ("coalesce(null, amount, 0)", Kind.NUMBER),
        ("coalesce(custom, plan_name)", Kind.TEXT),
        ("coalesce(null, custom)", Kind.ANY),
        ("lower(custom)", Kind.TEXT),
        ("sha256(plan_name)", Kind.TEXT),
        ("concat(amount, ok, meta)", Kind.TEXT),
        ("string(paid_at)", Kind.TEXT),
        ("paid_at < paid_at", Kind.BOOL),
    ],
)
def test_static_type_of_valid_expressions(text: str, expected: Kind) -> None:
    assert parse_expression(text).static_type(KINDS.get) is expected


@pytest.mark.parametrize(
    ("text", "offset", "message"),
    [
        ("lower(amount)", 6, "lower() expects text, got number (column amount)"),
        ("upper(trim(ok))", 11, "trim() expects text, got boolean (column ok)"),
        (
            "plan_name == 5",
            10,
            "'==' cannot compare text (column plan_name) with number",
        ),
        (
            "paid_at > born",
            8,
            "'>' cannot compare timestamp (column paid_at) with date",
        ),
        (
            "amount in (1, 'x')",
            7,
            "'in' cannot compare number (column amount) with text",
        ),
        ("not plan_name", 4, "'not' expects a boolean, got text (column plan_name)"),
        ("ok and amount", 7, "'and' expects a boolean, got number (column amount)"),
        ("ok or 'yes'", 6, "'or' expects a boolean, got text"),
        ("meta > meta", 5, "'>' cannot order json values"),
        ("coalesce(amount, plan_name)", 17, "coalesce() arguments must share a type"),
        ("plan_nme == 'x'", 0, "unknown column 'plan_nme'; did you mean 'plan_name'?"),
        ("changed(amout)", 8, "unknown column 'amout'; did you mean 'amount'?"),
        ("ok and new.zzz", 7, "unknown column 'zzz'"),
    ],
)
def test_static_type_errors_name_column_and_offset(
    text: str, offset: int, message: str
) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text).static_type(KINDS.get, known_columns=KINDS)
    assert caught.value.message.startswith(message)
    assert caught.value.offset == offset


def test_unknown_column_without_known_columns_has_no_suggestion() -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression("plan_nme").static_type(KINDS.get)
    assert caught.value.message == "unknown column 'plan_nme'"


# --- fuzz: garbage never escapes as anything but our errors ---

FRAGMENTS = [
    "a", "b", "new.", "old.", "new.a", "'x'", "'", '"', '"q"', "1", "2.5", "-", ".",
    "(", ")", ",", "==", "=", "!=", "<>", "<", "<=", ">", ">=", "and", "or", "not",
    "in", "is", "null", "true", "false", "changed(", "coalesce(", "lower(", "concat(",
    "sha256(", "string(", "trim(", "upper(", "__import__", " ", "é", "\x00", "\n", "!",
]  # fmt: skip
VALUES = [None, True, False, 0, 7, Decimal("1.5"), "x", "", MISSING, [1], {"k": "v"}]
VALUES += [date(2024, 1, 1), datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1)]
VALUES += [Decimal("NaN"), Decimal("sNaN"), object(), 10**40, "\ud800"]


def test_random_garbage_only_ever_raises_our_errors() -> None:
    rng = random.Random(20240501)
    parsed, bad_offsets = 0, []
    for _ in range(20000):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 12)))
        try:
            expression = parse_expression(text)
        except ExpressionError as exc:
            if not 0 <= exc.offset <= len(text):
                bad_offsets.append(text)
            continue
        parsed += 1
        _evaluate_and_type_randomly(expression, rng)
    assert bad_offsets == []
    assert parsed > 500  # the generator reaches valid expressions, not only errors


def _evaluate_and_type_randomly(expression: Any, rng: random.Random) -> None:
    new = {"a": rng.choice(VALUES), "b": rng.choice(VALUES)}
    old = {"a": rng.choice(VALUES), "b": rng.choice(VALUES)}
    with contextlib.suppress(EvaluationError):
        expression.evaluate(FakeRow(new, old))
    kinds = {"a": rng.choice(list(Kind)), "b": rng.choice(list(Kind))}
    with contextlib.suppress(ExpressionError):
        assert isinstance(expression.static_type(kinds.get), Kind)


PARIS = timezone(timedelta(hours=2))
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
JAN_1 = datetime(2026, 1, 1, tzinfo=PARIS)
TOKYO = ZoneInfo("Asia/Tokyo")
BERLIN_0030Z = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN)  # fold 0: +02:00
BERLIN_0130Z = datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=BERLIN)  # +01:00
PAID_AT = {
    "paid_at": datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
    "born": date(1990, 5, 17),
}


@pytest.mark.parametrize(
    ("text", "new", "expected"),
    [
        ("paid_at >= '2026-03-01'", PAID_AT, True),
        ("paid_at < '2026-03-01'", PAID_AT, False),
        ("paid_at > '2026-03-01 09:29:59'", PAID_AT, True),
        ("paid_at == '2026-03-01T09:30:00Z'", PAID_AT, True),
        ("paid_at == '2026-03-01T11:30:00+02:00'", PAID_AT, True),
        ("paid_at != '2026-03-01T09:30:00+02:00'", PAID_AT, True),
        ("'2026-03-02' > paid_at", PAID_AT, True),
        ("'2026-03-02' <= paid_at", PAID_AT, False),
        ("born == '1990-05-17'", PAID_AT, True),
        ("born < '1990-05-18' and born > '1990-05-16'", PAID_AT, True),
        ("born in ('1990-05-16', '1990-05-17')", PAID_AT, True),
        ("born not in ('1990-05-16', '1990-05-17')", PAID_AT, False),
        ("paid_at in ('2026-03-01 09:30', '2026-03-02')", PAID_AT, True),
        ("paid_at in ('2026-03-01T11:30:00+02:00')", PAID_AT, True),
        ("paid_at in ('2026-03-01')", PAID_AT, False),
        ("coalesce(paid_at, null) > '2026-01-01'", PAID_AT, True),
        # Where the clocks went back, 02:30 is shown twice: each instant is
        # itself, and a wall time without offset is the later, as in SQL.
        ("t == '2026-10-25T02:30:00+02:00'", {"t": BERLIN_0030Z}, True),
        ("t != '2026-10-25T02:30:00+02:00'", {"t": BERLIN_0030Z}, False),
        ("t < '2026-10-25T02:30:00+01:00'", {"t": BERLIN_0030Z}, True),
        ("t == '2026-10-25 02:30'", {"t": BERLIN_0130Z}, True),
        ("t > '2026-10-25 02:30'", {"t": BERLIN_0030Z}, False),
        # A time without an offset is read in the value's own zone.
        (
            "t == '2026-03-01 09:30'",
            {"t": datetime(2026, 3, 1, 9, 30, tzinfo=PARIS)},
            True,
        ),
        ("t > '2026-03-01'", {"t": datetime(2026, 3, 1, 0, 30, tzinfo=PARIS)}, True),
        ("paid_at > '2026-01-01'", {"paid_at": None}, None),
        # Beside text, such a literal is text.
        ("status == '2026-03-01'", {"status": "2026-03-01"}, True),
        # Times Python cannot hold stay text: before or after any literal.
        ("t < '0001-01-01'", {"t": "2030-01-01 00:00:00 BC"}, True),
        ("t >= '2026-01-01'", {"t": "2030-01-01 00:00:00+00 BC"}, False),
        ("d < '0001-01-01'", {"d": "0044-03-15 BC"}, True),
        ("t > '9999-12-31'", {"t": "10000-01-01 00:00:00"}, True),
        ("t < '2026-01-01'", {"t": "10000-01-01 00:00:00+00"}, False),
        ("t == '2026-01-01'", {"t": "infinity"}, False),
        ("t != '2026-01-01'", {"t": "infinity"}, True),
        ("'2026-01-01' < t", {"t": "infinity"}, True),
        ("t <= '2026-01-01'", {"t": "-infinity"}, True),
        # A wall time past an end of Python's calendar in the value's zone.
        ("t < '9999-12-31 23:00'", {"t": datetime(2026, 1, 1, tzinfo=NEW_YORK)}, True),
        (
            "t >= '9999-12-31 23:00'",
            {"t": datetime(2026, 1, 1, tzinfo=NEW_YORK)},
            False,
        ),
        ("t > '0001-01-01'", {"t": datetime(2026, 1, 1, tzinfo=TOKYO)}, True),
        ("t > '2026-01-01'", {"t": "9999-12-31 23:59:59"}, True),
        ("t < '2026-01-01'", {"t": "0001-01-01 00:00:00"}, True),
        # Such a wall time compares as one with a literal without an offset.
        ("t == '9999-12-31 23:59:59'", {"t": "9999-12-31 23:59:59"}, True),
        ("t >= '9999-12-31 23:59:59'", {"t": "9999-12-31 23:59:58"}, False),
        ("t in ('9999-12-31T23:59:59')", {"t": "9999-12-31 23:59:59"}, True),
        ("t not in ('9999-12-31')", {"t": "9999-12-31 23:59:59"}, True),
        ("t < '9999-12-31T23:59:59-05:00'", {"t": "9999-12-31 23:59:59"}, False),
        # Beside another column, in (...) included.
        ("t > u", {"t": "infinity", "u": JAN_1}, True),
        ("u >= t", {"t": "infinity", "u": JAN_1}, False),
        ("d < day", {"d": "0044-03-15 BC", "day": date(2026, 1, 1)}, True),
        ("t in (u, '2027-01-01')", {"t": "infinity", "u": JAN_1}, False),
        ("u in ('2026-01-01T00:00:00+02:00', t)", {"t": "infinity", "u": JAN_1}, True),
        ("u in ('2026-01-01 00:00', null)", {"u": JAN_1}, True),
        ("u not in ('2025-01-01', null)", {"u": JAN_1}, None),
        ("u in ('2025-01-01', t)", {"t": JAN_1, "u": JAN_1}, True),
    ],
)
def test_text_literal_beside_a_time_reads_as_a_time(
    text: str, new: dict[str, Any], expected: Any
) -> None:
    assert evaluate(text, new) is expected


@pytest.mark.parametrize(
    ("text", "new"),
    [
        ("born == '1990-05-17 10:00'", PAID_AT),
        ("paid_at > 'soon'", PAID_AT),
        ("born in ('1990-05-17 10:00')", PAID_AT),
    ],
)
def test_text_that_is_no_time_beside_a_time_is_an_evaluation_error(
    text: str, new: dict[str, Any]
) -> None:
    with pytest.raises(EvaluationError, match="cannot compare"):
        evaluate(text, new)


@pytest.mark.parametrize(
    "text",
    [
        "paid_at > '2026-01-01'",
        "paid_at <= '2026-01-01T23:59:59.5+05:30'",
        "'2026-01-01' < paid_at",
        "born >= '2000-02-29'",
        "paid_at in ('2026-01-01', '2026-01-02 10:00')",
        "born not in ('2000-02-29')",
        "plan_name == '2026-01-01'",
    ],
)
def test_static_type_accepts_a_time_written_as_text(text: str) -> None:
    assert parse_expression(text).static_type(KINDS.get) is Kind.BOOL


@pytest.mark.parametrize(
    ("text", "offset", "message"),
    [
        ("paid_at > 'soon'", 10, "'soon' is not a time; write one as '2026-01-01' or"),
        ("paid_at > '2026-02-30'", 10, "'2026-02-30' is not a time"),
        ("paid_at > '2026-10-25+01:00'", 10, "'2026-10-25+01:00' is not a time"),
        ("paid_at > '2026-10-25x05:00'", 10, "'2026-10-25x05:00' is not a time"),
        ("'yesterday' < paid_at", 0, "'yesterday' is not a time"),
        ("born == '1990-05-17 10:00'", 8, "'1990-05-17 10:00' is more than a date"),
        ("paid_at in ('2026-01-01', 'soon')", 26, "'soon' is not a time"),
        ("paid_at in ('2026-01-01', 5)", 8, "'in' cannot compare timestamp"),
    ],
)
def test_static_type_refuses_text_that_is_no_time_beside_a_time(
    text: str, offset: int, message: str
) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text).static_type(KINDS.get)
    assert caught.value.message.startswith(message)
    assert caught.value.offset == offset
