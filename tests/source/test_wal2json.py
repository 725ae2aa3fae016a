"""wal2json format-2 rows become events with exact values, or stop with DecodeError.

Every row fed to ``parse_row`` here was written by the real server: the module makes
its changes once, one transaction per scenario, and reads each scenario's rows
through ``Slot.peek`` (the daemon's own options, add-tables and add-msg-prefixes
included) before advancing the slot past them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from cdc_tracker.errors import DecodeError
from cdc_tracker.model import Action, Change
from cdc_tracker.source.wal2json import (
    Begin,
    Commit,
    Event,
    Message,
    Transaction,
    Truncate,
    parse_row,
)
from cdc_tracker.testing.postgres import PostgresServer
from tests.harness import module_database, read_slot

DATABASE = "wal2json_rows"
SLOT = "wal2json_rows"
TABLES = ["public.numbers", "public.m", "public.k"]
SCHEMA = """
create table numbers (id int primary key, num numeric, dbl double precision);
create table m (id bigint primary key, plan text, notes text);
alter table m replica identity full;
-- Stored out of line uncompressed, so an update that leaves it alone is an
-- unchanged TOAST value, which wal2json leaves out of the new image.
alter table m alter column notes set storage external;
create table k (id bigint primary key, plan text);
"""
NOTES = "toasted " * 400
SECRET = "secret-plan"

# (column, SQL literal, what parse_row must return); row i + 1 holds case i.
NUMBERS: list[tuple[str, str, Decimal | int]] = [
    (
        "num",
        "123456789012345678901234567890.12",
        Decimal("123456789012345678901234567890.12"),
    ),
    (
        "num",
        "98765432109876543210.000000001",
        Decimal("98765432109876543210.000000001"),
    ),
    ("num", "4.10", Decimal("4.10")),
    ("dbl", "2.5e-09", Decimal("2.5e-09")),
    ("num", "123456789012345678901234567890", 123456789012345678901234567890),
    # numeric has no negative zero: the server stores and writes 0.0.
    ("num", "-0.0", Decimal("0.0")),
    ("dbl", "'-0.0'", 0),
    (
        "num",
        "123456789012345678901234567.891",
        Decimal("123456789012345678901234567.891"),
    ),
]
THIRTY_DIGITS = 7
NEGATIVE_ZERO_DOUBLE = 6


def _numbers_insert() -> str:
    values = ", ".join(
        f"({i + 1}, {literal}, null)"
        if column == "num"
        else f"({i + 1}, null, {literal})"
        for i, (column, literal, _) in enumerate(NUMBERS)
    )
    return f"insert into numbers (id, num, dbl) values {values}"


# One scenario, one capture; each statement runs in its own transaction.
SCENARIOS: dict[str, list[str]] = {
    "numbers": [_numbers_insert()],
    "full_insert": ["insert into m values (1, 'basic', repeat('toasted ', 400))"],
    "full_update": ["update m set plan = 'pro' where id = 1"],
    "inserts": [f"insert into k values (1, '{SECRET}'), (2, 'free'), (3, 'free')"],
    "update": ["update k set plan = 'pro' where id = 1"],
    "key_change": ["update k set id = 10 where id = 2"],
    "delete": ["delete from k where id = 3"],
    "truncate": ["truncate k"],
    "messages": [
        "select pg_logical_emit_message(false, 'cdc-tracker', 'hi')",
        "select pg_logical_emit_message(false, 'other', 'hi')",
        "select pg_logical_emit_message(true, 'cdc-tracker', 'hi')",
    ],
}


@pytest.fixture(scope="module")
def wal(pg: PostgresServer) -> Iterator[dict[str, list[str]]]:
    """The rows the server wrote for each scenario, read as the daemon reads them."""
    # empty_db is per test; one database and one slot serve this whole module.
    with module_database(pg, DATABASE, SLOT, SCHEMA) as conn:
        dsn = conn.info.dsn
        yield {name: _capture(conn, dsn, sql) for name, sql in SCENARIOS.items()}


def _capture(
    conn: psycopg.Connection[tuple[object, ...]], dsn: str, statements: list[str]
) -> list[str]:
    for statement in statements:
        conn.execute(statement)
    return read_slot(dsn, SLOT, TABLES)


def _events(rows: list[str]) -> list[Event]:
    tx = Transaction()
    return [parse_row(row, tx) for row in rows]


def _changes(rows: list[str]) -> list[Change]:
    return [event for event in _events(rows) if isinstance(event, Change)]


def _new(change: Change) -> dict[str, Any]:
    assert change.new is not None
    return change.new


def _number(wal: dict[str, list[str]], case: int) -> Any:
    column = NUMBERS[case][0]
    by_id = {_new(change)["id"]: change for change in _changes(wal["numbers"])}
    return _new(by_id[case + 1])[column]


@pytest.mark.parametrize(
    "case",
    [0, 1, 2, 3, 4, 5],
    ids=[literal for _, literal, _ in NUMBERS[:6]],
)
def test_numbers_keep_every_digit_and_their_scale(
    wal: dict[str, list[str]], case: int
) -> None:
    expected = NUMBERS[case][2]

    value = _number(wal, case)

    assert value == expected
    assert type(value) is type(expected)
    assert str(value) == str(expected)


def test_a_thirty_digit_numeric_is_never_a_float(wal: dict[str, list[str]]) -> None:
    value = _number(wal, THIRTY_DIGITS)

    assert isinstance(value, Decimal)
    assert format(value, "f") == "123456789012345678901234567.891"


def test_a_negative_zero_double_is_zero(wal: dict[str, list[str]]) -> None:
    # The server writes a bare -0, a JSON integer: the value survives, its sign not.
    row = wal["numbers"][1 + NEGATIVE_ZERO_DOUBLE]  # after the B row

    assert '"value":-0}' in row
    assert _number(wal, NEGATIVE_ZERO_DOUBLE) == 0


def test_an_update_carries_both_images_their_types_and_the_key(
    wal: dict[str, list[str]],
) -> None:
    (change,) = _changes(wal["full_update"])

    assert change.action is Action.UPDATE
    assert change.table == "public.m"
    assert change.new == {"id": 1, "plan": "pro"}
    assert change.old == {"id": 1, "plan": "basic", "notes": NOTES}
    assert change.types == {"id": "bigint", "plan": "text", "notes": "text"}
    assert change.key == ("id",)


def test_an_update_under_default_identity_carries_the_key_as_its_old_image(
    wal: dict[str, list[str]],
) -> None:
    (update,) = _changes(wal["update"])
    (key_change,) = _changes(wal["key_change"])

    assert (update.new, update.old) == ({"id": 1, "plan": "pro"}, {"id": 1})
    assert (key_change.new, key_change.old) == ({"id": 10, "plan": "free"}, {"id": 2})
    assert key_change.types == {"id": "bigint", "plan": "text"}
    assert key_change.key == ("id",)


def test_a_delete_has_no_new_image(wal: dict[str, list[str]]) -> None:
    (change,) = _changes(wal["delete"])

    assert change.action is Action.DELETE
    assert change.new is None
    assert change.old == {"id": 3}
    assert change.key == ("id",)


def test_changes_are_numbered_within_their_transaction(
    wal: dict[str, list[str]],
) -> None:
    begin, first, second, third, commit = _events(wal["inserts"])

    assert isinstance(begin, Begin)
    assert isinstance(first, Change)
    assert isinstance(second, Change)
    assert isinstance(third, Change)
    assert (first.ordinal, second.ordinal, third.ordinal) == (0, 1, 2)
    assert first.commit_lsn == second.commit_lsn == begin.commit_lsn
    assert first.commit_time == begin.commit_time
    assert begin.commit_time.tzinfo is not None
    assert commit == Commit(begin.commit_lsn)


def test_each_transaction_starts_its_numbering_again(
    wal: dict[str, list[str]],
) -> None:
    tx = Transaction()
    events = [parse_row(row, tx) for row in wal["inserts"] + wal["update"]]
    changes = [event for event in events if isinstance(event, Change)]

    assert [change.ordinal for change in changes] == [0, 1, 2, 0]
    assert changes[3].commit_lsn > changes[0].commit_lsn


def test_truncate_and_messages_are_events_of_their_own(
    wal: dict[str, list[str]],
) -> None:
    _, truncate, _ = _events(wal["truncate"])
    # The non-transactional message comes first; it is tested on its own below.
    begin, message, commit = _events(wal["messages"][1:])

    assert truncate == Truncate("public.k")
    assert isinstance(begin, Begin)
    assert message == Message("cdc-tracker", True)
    assert isinstance(commit, Commit)


def test_only_our_prefix_reaches_the_parser(wal: dict[str, list[str]]) -> None:
    prefixes = [row for row in wal["messages"] if '"action":"M"' in row]

    assert len(prefixes) == 2
    assert all('"prefix":"cdc-tracker"' in row for row in prefixes)


def test_a_message_outside_a_transaction_is_an_event_of_its_own(
    wal: dict[str, list[str]],
) -> None:
    assert parse_row(wal["messages"][0], Transaction()) == Message("cdc-tracker", False)


def _replace(pattern: str, replacement: str) -> Callable[[str], str]:
    return lambda row: re.sub(pattern, replacement, row, count=1)


# Each case is a real row from the server, damaged on purpose by the test: the
# server itself never wrote these, but a bug or a plugin upgrade could.
# (row: 0 = B, 1 = first insert, 4 = C of the "inserts" transaction; damage)
DAMAGED: dict[str, tuple[int, Callable[[str], str]]] = {
    "truncated": (1, lambda row: row[: len(row) // 2]),
    "unknown action": (1, _replace(r'"action":"I"', '"action":"X"')),
    "no action": (1, _replace(r'"action":"I",', "")),
    "no schema": (1, _replace(r'"schema":"public",', "")),
    "column without type or value": (1, _replace(r',"type":"bigint","value":1', "")),
    "commit lsn not a position": (
        4,
        _replace(r'"nextlsn":"[^"]*"', '"nextlsn":"nonsense"'),
    ),
    "begin timestamp not a time": (
        0,
        _replace(r'"timestamp":"[^"]*"', '"timestamp":"yesterday"'),
    ),
}


@pytest.mark.parametrize("damage", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_row_we_do_not_understand_stops_with_a_decode_error(
    wal: dict[str, list[str]], damage: tuple[int, Callable[[str], str]]
) -> None:
    index, damaged = damage
    original = wal["inserts"][index]
    row = damaged(original)
    assert row != original

    with pytest.raises(DecodeError) as caught:
        parse_row(row, Transaction())

    assert "nonsense" not in str(caught.value)
    assert "yesterday" not in str(caught.value)
    assert SECRET not in str(caught.value)
