"""The C reader of change rows makes exactly the changes msgspec's path makes.

``parse_row`` reads a change row with ``_rowparse`` and leaves any other row, or
one the reader declines, to msgspec. Both must agree on every row the server can
write: here the server writes rows of awkward types and values (escapes, every
plane of Unicode, numbers past 64 bits and past Python's digit limit, json,
arrays, NULLs, odd names, TOASTed values, deletes under FULL identity), each is
parsed both ways, and the results must be equal value by value, type by type.
Then every prefix of those rows, and each with one byte changed, must be either
declined or read as msgspec reads it: never different, never a crash.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from psycopg import sql

from cdc_tracker.errors import DecodeError
from cdc_tracker.model import Change
from cdc_tracker.source import wal2json
from cdc_tracker.source._rowparse import change as read_change
from cdc_tracker.source.wal2json import Event, Transaction, parse_row
from cdc_tracker.testing.postgres import PostgresServer
from tests.harness import module_database, read_slot

DATABASE = "rowparse_rows"
SLOT = "rowparse_rows"
# More tables than the reader keeps columns' heads for (16): each evicts another.
MANY = [f"many{i}" for i in range(20)]
TABLES = [
    'public."Odd ""Name"".x"',
    "public.plain",
    "public.nokey",
    "public.wide",
    "public.shifting",
    *(f"public.{name}" for name in MANY),
]
# Wider than the reader's shape of 64 columns: its types dict is made as read.
WIDE_COLUMNS = ", ".join(f"c{i} int" for i in range(1, 70))
SCHEMA = f"""
create type mood as enum ('ok', 'sad "very"');
create table "Odd ""Name"".x" (
  "id" bigint primary key, "two words" text, "é\\" text
);
create table plain (
  a int, b bigint, c numeric, d double precision, e real, f text, g jsonb, h json,
  i int[], j text[], k boolean, l timestamptz, m bytea, n mood, o uuid, p interval,
  q numeric, r varchar(5), s char(3), big numeric, notes text,
  primary key (a, b)
);
alter table plain replica identity full;
alter table plain alter column notes set storage external;
create table nokey (v text);
create table wide (id int primary key, {WIDE_COLUMNS});
alter table wide replica identity full;
create table shifting (id int primary key, a text);
alter table shifting replica identity full;
""" + "".join(f"create table {name} (id int primary key, v text);\n" for name in MANY)
NASTY_TEXT = [
    "",
    "plain",
    'quote " backslash \\ slash /',
    "tab\tnewline\ncr\rformfeed\fbackspace\bbell\x07 esc\x1b unit\x1f",
    "é ü ß 中文 ✓",
    "emoji 😀 and 𝄞 beyond the first plane",
    "\\u0041 is not an escape here",
    "ends with a backslash \\",
]
STATEMENTS = [
    'insert into "Odd ""Name"".x" values (1, \'two\', \'w\')',
    'update "Odd ""Name"".x" set "two words" = \'à\' where id = 1',
    *(
        "insert into plain (a, b, f, j) values "
        f"({i}, {i}, {sql.quote(text)}, array[{sql.quote(text)}])"
        for i, text in enumerate(NASTY_TEXT)
    ),
    "insert into plain values (100, 9223372036854775807, 12345678901234567890.5, "
    "1.5e300, 'NaN', 'x', '{\"k\": [1, 2.50, null, \"\\\\u00e9\"]}', "
    "'{\"a\" : 1}', '{1,2,3}', '{\"a b\",NULL}', true, '2024-01-01 00:00+05:30', "
    "'\\x00ff', 'sad \"very\"', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day', "
    "'NaN', 'abc', 'ab', 123456789012345678901234567890, repeat('t', 5000))",
    "insert into plain (a, b, c, d, e, q) values (101, -9223372036854775808, -0.000001,"
    " '-Infinity', 'Infinity', '1e-100')",
    # An integer numeric past Python's 4,300-digit limit: msgspec declines it too.
    f"insert into plain (a, b, big) values (102, 1, 1{'0' * 5000})",
    "insert into plain (a, b, k) values (103, 1, null)",
    "update plain set c = 2 where a = 100",  # notes stays TOASTed, unchanged
    "delete from plain where a = 101",
    "insert into nokey values ('no key'), (null)",
    "delete from nokey where v is null",
    "truncate nokey",
    "insert into wide (id, c69) values (1, 69)",
    "update wide set c1 = 1 where id = 1",
    "delete from wide where id = 1",
    "select pg_logical_emit_message(true, 'cdc-tracker', 'hi')",
    # A table's columns change between its rows: a column's bytes up to its
    # value (kept from the row before) stop matching, by name, type or count.
    "insert into shifting values (1, 'a')",
    "insert into shifting values (2, 'b')",
    "alter table shifting add column b int",
    "insert into shifting values (3, 'c', 3)",
    "update shifting set a = 'cc' where id = 3",
    "alter table shifting alter column a type varchar(10)",
    "insert into shifting values (4, 'd', 4)",
    "update shifting set b = 5 where id = 4",
    "alter table shifting drop column a",
    "insert into shifting values (5, 5)",
    "insert into plain (a, b) values (200, 1)",
    "insert into shifting values (6, 6)",
    *(f"insert into {name} values (1, 'one')" for name in MANY),
    *(f"insert into {name} values (2, 'two')" for name in reversed(MANY)),
]


@pytest.fixture(scope="module")
def rows(pg: PostgresServer) -> Iterator[list[str]]:
    """Every row the server wrote for STATEMENTS, as the daemon streams them."""
    with module_database(pg, DATABASE, SLOT, SCHEMA) as conn:
        conn.execute("alter table nokey replica identity full")
        for statement in STATEMENTS:
            conn.execute(statement)
        yield read_slot(conn.info.dsn, SLOT, TABLES)


def _msgspec_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal2json, "_read_change", None)


def _events(rows: list[bytes]) -> list[Event | str]:
    """Each row's event, or its DecodeError's message."""
    tx = Transaction()
    events: list[Event | str] = []
    for row in rows:
        try:
            events.append(parse_row(row, tx))
        except DecodeError as exc:
            events.append(str(exc))
    return events


def _exact(value: Any) -> Any:
    """A value with its type at every level, so that True differs from 1 and
    Decimal('1.0') from Decimal('1.00')."""
    if isinstance(value, dict):
        return {key: _exact(item) for key, item in value.items()}, list(value)
    if isinstance(value, (list, tuple)):
        return type(value).__name__, [_exact(item) for item in value]
    if isinstance(value, Change):
        return _exact(
            [getattr(value, name) for name in Change.__struct_fields__]
            + [type(value.action)]
        )
    return type(value).__name__, str(value)


def _both_ways(rows: list[bytes], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    fast = _exact(_events(rows))
    with monkeypatch.context() as patch:
        _msgspec_path(patch)
        slow = _exact(_events(rows))
    return fast, slow


def test_the_server_wrote_every_case(rows: list[str]) -> None:
    changes = [row for row in rows if read_change(row) is not None]

    assert len(rows) > 2 * len(STATEMENTS)
    # Every change but the one past the digit limit is the C reader's.
    assert (
        len(changes) == sum('"action":"' + a in row for row in rows for a in "IUD") - 1
    )
    assert any('\\"' in row and "\\\\" in row for row in rows)
    assert any("😀" in row for row in rows)


def test_both_paths_make_the_same_events(
    rows: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    as_bytes = [row.encode() for row in rows]

    fast, slow = _both_ways(as_bytes, monkeypatch)

    assert fast == slow


def test_rows_read_through_sql_as_text_make_the_same_events(rows: list[str]) -> None:
    tx, text_tx = Transaction(), Transaction()
    for row in rows:
        assert _exact(parse_row(row, text_tx)) == _exact(parse_row(row.encode(), tx))


def test_values_keep_their_kinds(rows: list[str]) -> None:
    (big_row,) = [
        row for row in rows if '"value":100}' in row and '"action":"I"' in row
    ]
    result = read_change(big_row.encode())
    assert result is not None
    new = result[4]
    assert new is not None

    assert type(new["b"]) is int
    assert new["b"] == 2**63 - 1
    assert type(new["c"]) is Decimal
    assert str(new["c"]) == "12345678901234567890.5"
    assert new["k"] is True
    assert new["big"] == 123456789012345678901234567890
    assert new["n"] == 'sad "very"'
    assert result[7] == ("a", "b")


def test_rows_of_one_shape_share_one_types_dict(rows: list[str]) -> None:
    def types(table: str, action: str) -> list[dict[str, str]]:
        read = [read_change(row) for row in rows]
        return [
            change[6]
            for change in read
            if change is not None and change[2] == table and change[0] == action
        ]

    inserts = types("plain", "I")
    (delete,) = types("plain", "D")
    wide = types("wide", "I") + types("wide", "U") + types("wide", "D")

    assert len(inserts) > 5
    assert all(each is inserts[0] for each in inserts)
    assert delete is not inserts[0]
    assert delete == inserts[0]  # a FULL identity: every column, from the old image
    assert [len(each) for each in wide] == [70, 70, 70]
    assert wide[0] is not wide[1]


def test_a_column_matching_the_row_before_up_to_its_value_is_still_checked(
    rows: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (row,) = [row for row in rows if '"value":"b"}' in row]
    extra = row.replace('"value":"b"}', '"value":"b","value":"c"}')
    spaced = row.replace('"value":"b"}', '"value": "b" }')
    assert read_change(row) is not None  # its heads are kept

    assert read_change(extra) is None  # a repeated key: msgspec's to judge
    fast, slow = _both_ways(
        [row.encode(), extra.encode(), spaced.encode()], monkeypatch
    )
    assert fast == slow
    assert isinstance(_events([row.encode(), spaced.encode()])[1], Change)


def test_cut_rows_are_declined_or_read_alike(
    rows: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    changes = [row.encode() for row in rows if read_change(row) is not None][:12]
    cut = [row[:end] for row in changes for end in range(len(row))]

    fast, slow = _both_ways(cut, monkeypatch)

    assert fast == slow


@pytest.mark.parametrize(
    "byte", [b'"', b"\\", b"\x00", b"\xff", b"{", b"]", b"9", b"."]
)
def test_rows_with_a_byte_changed_are_declined_or_read_alike(
    rows: list[str], monkeypatch: pytest.MonkeyPatch, byte: bytes
) -> None:
    changes = [row.encode() for row in rows if read_change(row) is not None][:6]
    changed = [
        row[:at] + byte + row[at + 1 :] for row in changes for at in range(len(row))
    ]

    fast, slow = _both_ways(changed, monkeypatch)

    assert fast == slow


@pytest.mark.parametrize(
    "entry", ['{"type":null,"name":"a"}', '{"type":"größe","name":"a"}']
)
def test_a_key_entry_naming_its_type_first_is_read_alike(
    rows: list[str], monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    # wal2json writes "name" first; a reader must not crash on the other order.
    (row,) = [row for row in rows if '"value":100}' in row and '"action":"I"' in row]
    changed = row.replace('{"name":"a","type":"integer"}', entry)
    assert changed != row

    fast, slow = _both_ways([changed.encode()], monkeypatch)

    assert fast == slow
    assert isinstance(_events([changed.encode()])[0], Change)


def test_a_number_past_decimals_range_is_a_decode_error(
    rows: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (row,) = [row for row in rows if '"value":100}' in row and '"action":"I"' in row]
    changed = row.replace('"value":100}', '"value":1e999999999999999999999}', 1)

    fast, slow = _both_ways([changed.encode()], monkeypatch)

    assert fast == slow
    assert "cannot parse wal2json row" in str(_events([changed.encode()])[0])


def test_a_row_read_while_another_is_being_read_is_read_alike(
    rows: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reading a row can run Python code (a collection, and finalizers): here a
    # finalizer reads rows of the same table, of another shape, in the middle.
    shifting = [row.encode() for row in rows if '"table":"shifting"' in row]
    first, other = shifting[0], shifting[-1]
    assert read_change(first) is not None  # its heads are kept
    inner: list[Any] = []

    class ReadsOnCollection:
        def __init__(self) -> None:
            self.cycle = self

        def __del__(self) -> None:
            inner.append(read_change(other))

    thresholds = gc.get_threshold()
    gc.collect()
    gc.set_threshold(1)
    try:
        outer = []
        for _ in range(50):
            ReadsOnCollection()
            outer.append(read_change(first))
    finally:
        gc.set_threshold(*thresholds)
        gc.collect()

    assert inner  # a finalizer did read in the middle of the reads
    assert all(_exact(each) == _exact(read_change(first)) for each in outer)
    assert all(_exact(each) == _exact(read_change(other)) for each in inner)
