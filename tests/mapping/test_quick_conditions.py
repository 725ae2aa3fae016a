"""Quick conditions give what the general reader gives, or leave it the choice.

``mapping/quick.py`` reads a rule's condition off a change's raw values. Each test
evaluates conditions both ways on real changes (inserts, updates, deletes, nulls,
an unchanged TOASTed value, a key-only old image) and checks that wherever the
quick function answers, its answer is the general reader's, and that it does
answer the common shapes (so a quick path that always declined would fail).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_tracker.mapping import mapper as mapper_module
from cdc_tracker.mapping.mapper import Mapper
from cdc_tracker.mapping.quick import UNSURE, quick_condition
from cdc_tracker.mapping.row_view import ByType, Converters, RowView
from cdc_tracker.mapping.values import converter_for, output_kind
from cdc_tracker.model import Change
from cdc_tracker.rules.expr import EvaluationError, parse_expression
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.testing.postgres import PostgresServer
from tests.harness import live_changes
from tests.mapping.test_map_encoded import _encoded, _letter

TABLES = [
    """create type mood as enum ('calm', 'busy')""",
    """create table kinds (
        id int primary key, name text, code char(4), n int, big bigint,
        amount numeric(12, 2), ratio double precision, ok boolean, at timestamptz,
        day date, tags text[], doc jsonb, feeling mood, body text)""",
    "alter table kinds replica identity full",
    "create table keyed (id int primary key, name text, n int, ok boolean)",
]
STATEMENTS = [
    *TABLES,
    """insert into kinds values
        (1, 'a', 'ab', 1, 10, 10.50, 0.5, true, '2026-01-02 03:04:05+00',
         '2026-01-02', '{x,y}', '{"k": 1}', 'calm', 'short'),
        (2, 'b', null, 2, null, 3, null, false, null, null, null, null, 'busy',
         repeat('long ', 2000)),
        (3, null, 'cd  ', null, 9223372036854775807, -0.01, 1e300, null,
         'infinity', '-infinity', '{}', 'null', null, null),
        (4, ' b ', 'x', 3, -5, 0, 2, true, '2026-06-01 00:00:00+02', '2026-06-01',
         '{"a b",NULL}', '[1, 2.50]', 'calm', '')""",
    "update kinds set name = 'c', ok = not ok, amount = amount + 1 where id in (1, 2)",
    "update kinds set n = 7 where id = 2",  # body is TOASTed and unchanged
    "update kinds set name = name, amount = 10.500 where id = 1",
    "update kinds set ok = null, name = null, n = null where id = 4",
    "update kinds set ok = true, name = 'a' where id = 4",
    "delete from kinds where id in (3, 4)",
    "insert into keyed values (1, 'a', 1, true), (2, null, null, null)",
    "update keyed set name = 'b', ok = false",
    "delete from keyed where id = 1",
]

# Shapes the quick path reads (it must answer some changes of each).
READ = [
    "n == 1",
    "n != 1",
    "1 < n",
    "n >= 2",
    "big > 5",
    "name == 'a'",
    "name != 'a'",
    "'b' > name",
    "name < 'b'",
    "ok",
    "not ok",
    "old.ok and not new.ok",
    "ok or n > 2",
    "ok and n > 2",
    "not (ok or name == 'c')",
    "changed(name)",
    "changed(amount)",
    "changed(ok)",
    "changed(n)",
    "amount >= 10.5",
    "amount == 11.5",
    "ratio > 1",
    "name is null",
    "name is not null",
    "n in (1, 2, 3)",
    "name not in ('a', 'b')",
    "feeling == 'calm'",
    "old.name == 'b'",
]
# Shapes it reads, whose columns always need the general reader: it must decline
# each change (or agree).
DECLINED = [
    "code == 'ab'",  # character(n): trimmed by the general reader
    "tags is null",  # an array, converted
    "doc is null",  # a json document, converted
    "day is null",
]
# Shapes it does not read at all.
UNREAD = [
    "at > '2026-01-01'",  # a time literal
    "lower(name) == 'a'",
    "coalesce(n, 0) > 1",
    "n in (1, 'a')",
    "n < amount",
]
# Conditions the general reader fails on some changes: the quick path must leave
# those to it.
FAILING = [
    "n == 'x'",
    "not name",
    "ok and name",
    "old.n == 1",  # keyed's old image holds only the key
]


@pytest.fixture(scope="module")
def changes(pg: PostgresServer) -> Iterator[list[Change]]:
    """The statements' changes, read once for the module's tests."""
    name = "quick_conditions"
    dsn = pg.create_database(name)
    try:
        yield live_changes(dsn, STATEMENTS, ["public.kinds", "public.keyed"])
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def _general(text: str, change: Change) -> Any:
    row = RowView(change, Converters(converter_for, UTC))
    try:
        return parse_expression(text).evaluate(row)
    except EvaluationError as exc:
        return type(exc)


def _quick(text: str) -> Any:
    return quick_condition(parse_expression(text), ByType(output_kind, UTC).__getitem__)


@pytest.mark.parametrize("text", READ + DECLINED + FAILING)
def test_a_quick_answer_is_the_general_readers(
    text: str, changes: list[Change]
) -> None:
    quick = _quick(text)
    assert quick is not None, f"{text} is not read quickly"
    answered = 0
    for change in changes:
        got = quick(change.new, change.old, change.types)
        if got is UNSURE:
            continue
        answered += 1
        assert got is _general(text, change), (text, change)
    if text in READ:
        assert answered >= 3, f"{text}: answered {answered} changes only"
    if text in DECLINED:
        # Only a null, which needs no converting.
        column = text.split(maxsplit=1)[0]
        assert answered == sum(
            (source := change.new if change.new is not None else change.old) is not None
            and column in source
            and source[column] is None
            for change in changes
        ), f"{text}: answered a value that needs converting"


def test_failing_conditions_fail_where_the_quick_path_declines(
    changes: list[Change],
) -> None:
    for text in FAILING:
        quick = _quick(text)
        assert quick is not None
        failed = [
            c
            for c in changes
            if _general(text, c) is not None and isinstance(_general(text, c), type)
        ]
        assert failed, f"{text} fails on no change: the test shows nothing"
        for change in failed:
            assert quick(change.new, change.old, change.types) is UNSURE


@pytest.mark.parametrize("text", UNREAD)
def test_other_shapes_are_left_to_the_general_reader(text: str) -> None:
    assert _quick(text) is None


RULEBOOK = """
version: 1
tables:
  public.kinds:
    user_id: id
  public.keyed:
    user_id: id
track:
  - {event: One, table: kinds, on: [insert, update, delete], when: "n == 1"}
  - {event: Calm, table: kinds, on: [insert, update], when: "feeling == 'calm'",
     properties: {name: name}}
  - {event: Lost, table: kinds, on: update, when: "old.ok and not new.ok"}
  - {event: Renamed, table: kinds, on: update, when: "changed(name)",
     properties: {from: old.name, to: new.name}}
  - {event: Padded, table: kinds, on: insert, when: "code == 'ab'"}
  - {event: Odd, table: keyed, on: [update, delete], when: "old.n == 1"}
"""


def test_the_mapper_makes_the_same_calls_with_quick_conditions(
    changes: list[Change], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rulebook.yaml"
    path.write_text(RULEBOOK)
    book = load_rulebook(path)
    results = []
    asked = 0
    for quick in (True, False):
        if not quick:
            monkeypatch.setattr(mapper_module, "quick_condition", lambda *_: None)
        mapper = Mapper(book, "ns")
        if quick:
            assert all(p.quick_when for p in mapper._plans.values())
            for plan in mapper._plans.values():

                def counting(*args: Any, _fn: Any = plan.quick_when) -> Any:
                    nonlocal asked
                    got = _fn(*args)
                    asked += got is not UNSURE
                    return got

                plan.quick_when = counting
        calls: list[Any] = []
        dead: list[Any] = []
        for change in changes:
            mapper.map_encoded(change, calls, dead)
        results.append(([_encoded(c) for c in calls], sorted(map(_letter, dead))))
    assert results[0] == results[1]
    calls, letters = results[0]
    assert asked >= 20
    assert {call[3] for call in calls} >= {"One", "Calm", "Lost", "Renamed", "Padded"}
    # keyed's old image holds its key alone: "old.n" cannot be read.
    assert any("Odd" in str(letter) for letter in letters)
