"""The C call writer makes the bytes the mapper's Python path makes, or declines.

``Mapper.map_encoded`` hands a rule whose fields are columns of the new row and
literals to ``_writer``; a call it declines is made as a dict and encoded by
orjson, as every call is without it. Each test maps the same real changes both
ways (the writer switched off by ``_write = None``) and compares calls byte for
byte, dead letters included; and checks that the writer did answer, so that a
writer declining everything would fail here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_tracker.destination.batching import MAX_CALL_BYTES, SENT_AT_BYTES, EncodedCall
from cdc_tracker.mapping import mapper as mapper_module
from cdc_tracker.mapping.mapper import Mapper
from cdc_tracker.model import Action, Change, DeadLetter, Lsn
from cdc_tracker.rules.rulebook import load_rulebook
from tests.harness import live_changes
from tests.mapping.test_map_encoded import (
    COLUMNS,
    MORE_ROWS,
    RULEBOOK,
    _encoded,
    _letter,
)
from tests.replay.test_values_match_live import ROWS, TYPES_TABLE

TEXTS = """
version: 1
tables:
  public.texts:
    user_id: id
identify:
  - table: texts
    on: [insert, update]
    traits:
      body: body
      padded: padded
      moment: moment
      constant: "'x'"
track:
  - event: Text Written
    table: texts
    on: insert
    properties:
      body: body
      nested:
        padded: padded
        moment: moment
  - event: By Body
    table: texts
    on: insert
    user_id: body
    properties:
      padded: padded
"""
# Every ASCII control character, quotes, backslashes, and each UTF-8 length.
TEXTS_TABLE = (
    "create table texts (id int primary key, body text, padded char(6), "
    "moment timestamptz)"
)
TEXT_ROWS = [
    "insert into texts select i, 'c' || chr(i) || '\"\\/', chr(i + 64), "
    "'2026-12-04 16:42:12.5+02' from generate_series(1, 31) i",
    "insert into texts values "
    "(40, 'é 中 😀 \u2028', 'é  ', '2026-02-28 23:59:59.999999+00')",
    "insert into texts values (41, '', '', '0001-01-01 00:00:00+00')",
    "insert into texts values (42, null, null, null)",
    "insert into texts values (43, 'ends \\', '      ', '1200-06-30 12:00:00 BC')",
    "insert into texts values (44, 'x', 'y', 'infinity')",
    "insert into texts values (45, 'x', 'y', '2024-02-29 00:00:00.000001+00')",
    "insert into texts values (46, e' spaced\\t', 'z', null)",
    "update texts set body = body || '!' where id <= 3",
]


def _both_ways(
    rulebook: str,
    changes: list[Change],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[Any], list[Any], int]:
    """Each way's calls and dead letters under ``rulebook`` (its YAML), and how
    many calls the writer wrote."""
    path = tmp_path / "rulebook.yaml"
    path.write_text(rulebook)
    book = load_rulebook(path)
    written = 0
    results = []
    for use_writer in (True, False):
        if not use_writer:
            monkeypatch.setattr(mapper_module, "_user_text", None)
        mapper = Mapper(book, "ns")
        write = mapper._write
        assert write is not None, "the C writer is not built"
        if use_writer:

            def counting(*args: Any, _write: Callable[..., Any] = write) -> Any:
                nonlocal written
                body = _write(*args)
                written += body is not None
                return body

            mapper._write = counting
        else:
            mapper._write = None
        calls: list[EncodedCall] = []
        dead: list[DeadLetter] = []
        for change in changes:
            mapper.map_encoded(change, calls, dead)
        results.append(([_encoded(call) for call in calls], sorted(map(_letter, dead))))
    return results[0], results[1], written


def test_a_column_of_every_kind_is_written_as_python_writes_it(
    empty_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes = live_changes(empty_db, [TYPES_TABLE, *ROWS, *MORE_ROWS], ["public.kinds"])

    fast, slow, written = _both_ways(RULEBOOK, changes, tmp_path, monkeypatch)

    assert fast == slow
    assert len(fast[0]) > 10
    # The identify of every column, "Flagged" and "Word Changed" (old.word) are
    # written in C; rules reading expressions are not the writer's.
    assert written >= len(changes)


OLD_PROPERTIES = "".join(f"      {name}: old.{name}\n" for name in COLUMNS)
OLD_VALUES = f"""
version: 1
tables:
  public.kinds:
    user_id: id
track:
  - event: Was
    table: kinds
    on: [insert, update, delete]
    properties:
{OLD_PROPERTIES}\
      now: word
"""


def test_old_values_of_every_kind_are_written_as_python_writes_them(
    empty_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes = live_changes(empty_db, [TYPES_TABLE, *ROWS, *MORE_ROWS], ["public.kinds"])

    fast, slow, written = _both_ways(OLD_VALUES, changes, tmp_path, monkeypatch)

    assert fast == slow
    calls, letters = fast
    assert len(calls) == len(changes)
    assert not letters
    # Updates under REPLICA IDENTITY FULL are the writer's; an insert (no old
    # row) and a delete (no new row) are the general path's.
    updates = [change for change in changes if change.action is Action.UPDATE]
    assert len(updates) == 4
    assert written == len(updates)
    first = next(call for call in calls if b'"now":"changed"' in call[2])
    assert b'"word":"quote \\" and \\\\ slash"' in first[2]


def test_texts_and_times_are_written_as_python_writes_them(
    empty_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes = live_changes(empty_db, [TEXTS_TABLE, *TEXT_ROWS], ["public.texts"])

    fast, slow, written = _both_ways(TEXTS, changes, tmp_path, monkeypatch)

    assert fast == slow
    calls, letters = fast
    # 38 inserts (identify, Text Written), 3 updates (identify), and "By Body"
    # for every insert but the empty and the null body (dead letters).
    assert len(calls) == 2 * 38 + 3 + 36
    assert len(letters) == 2
    # A BC date or infinity, which the writer hands to values.py, included.
    assert written == len(calls)
    bodies = b"".join(call[2] for call in calls)
    assert b'"c\\u001f\\"\\\\/"' in bodies
    assert b'"moment":"2026-12-04T14:42:12.500000Z"' in bodies


@pytest.mark.parametrize(
    "zone", ["UTC", "Asia/Kolkata", "America/St_Johns", "Europe/Amsterdam"]
)
def test_times_the_server_prints_in_any_zone_are_written_as_python_writes_them(
    empty_db: str, tmp_path: Path, zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon reads in UTC; these are the server's prints in other zones
    # (offsets with minutes, and Amsterdam's local mean time of 1850, +00:19:32).
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(f"set timezone = '{zone}'")
        printed = [
            str(row[0])
            for row in conn.execute(
                "select t::text from unnest(array["
                "'2026-12-04 16:42:12.123456+00', '2026-07-01 00:00:00+00',"
                "'1850-01-01 12:00:00.5+00', '9999-12-31 23:59:59.99+00',"
                "'2000-02-29 12:00:00.000010+00']::timestamptz[]) t"
            )
        ]
    changes = [
        Change(
            "public.texts",
            Action.INSERT,
            {"id": n, "body": "b", "padded": "p", "moment": text},
            None,
            {
                "id": "integer",
                "body": "text",
                "padded": "character(6)",
                "moment": "timestamp with time zone",
            },
            Lsn(0x1000),
            n,
            datetime(2026, 12, 4, tzinfo=UTC),
            ("id",),
            f"0/1.{n}",
        )
        for n, text in enumerate(printed)
    ]

    fast, slow, written = _both_ways(TEXTS, changes, tmp_path, monkeypatch)

    assert fast == slow
    assert written >= 2 * (len(printed) - 1)  # LMT's offset in seconds is Python's


DEEP = """
version: 1
tables:
  public.deep:
    user_id: id
identify:
  - table: deep
    on: insert
    traits:
      doc: doc
track:
  - event: Deep
    table: deep
    on: insert
    properties:
      doc: doc
      nested:
        doc: doc
"""


def test_json_nested_near_the_encoders_limit_is_refused_alike(
    empty_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # orjson refuses past 255 levels: a document 250 to 256 deep fits in some
    # places of a call and not in others (an identify's traits are also in its
    # context, a nested field is one level deeper).
    rows = [
        f"insert into deep values ({depth}, '{'[' * depth}{']' * depth}')"
        for depth in range(248, 257)
    ]
    changes = live_changes(
        empty_db,
        ["create table deep (id int primary key, doc json)", *rows],
        ["public.deep"],
    )

    fast, slow, written = _both_ways(DEEP, changes, tmp_path, monkeypatch)

    assert fast == slow
    calls, letters = fast
    assert calls
    assert letters
    assert all("cannot encode" in letter[3] for letter in letters)
    assert written == len(calls)


SIZED = """
version: 1
tables:
  public.sized:
    user_id: id
track:
  - event: Sized
    table: sized
    on: insert
    properties:
      body: body
"""


def test_a_call_at_the_per_call_limit_is_sent_and_one_byte_more_is_a_dead_letter(
    empty_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = "create table sized (id int primary key, body text)"
    [probe] = live_changes(
        empty_db, [table, "insert into sized values (1, 'x')"], ["public.sized"]
    )
    fast, _, _ = _both_ways(SIZED, [probe], tmp_path, monkeypatch)
    # What the call takes beyond its body's text, sentAt included.
    overhead = len(fast[0][0][2]) + SENT_AT_BYTES - 1
    fits = MAX_CALL_BYTES - overhead
    changes = live_changes(
        empty_db,
        [
            f"insert into sized values (2, repeat('y', {fits}))",
            f"insert into sized values (3, repeat('z', {fits + 1}))",
        ],
        ["public.sized"],
    )

    fast, slow, written = _both_ways(SIZED, changes, tmp_path, monkeypatch)

    assert fast == slow
    [call], [letter] = fast
    assert len(call[2]) + SENT_AT_BYTES == MAX_CALL_BYTES
    assert f"the call is {MAX_CALL_BYTES + 1} bytes" in str(letter)
    assert written == 2
