"""Every column type, end to end: real WAL -> real daemon -> strict fake RudderStack.

One table holds a column of each type; one identify rule sends each as a trait.
Checks read the exact bytes on the wire (``ReceivedCall.raw``) where digits matter.
"""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from cdc_tracker.mapping.values import converter_for
from cdc_tracker.testing.rudderstack import FakeRudderStack, ReceivedCall
from tests.harness import running_daemon, settings_for, sql

SCHEMA = """
create type mood as enum ('sad', 'happy');
create domain price as numeric(10,2);
create table kinds (
  id bigint primary key,
  big numeric, money numeric(12,2), nan numeric, r real, d double precision,
  fnan double precision, huge bigint, i integer, b boolean,
  t text, v varchar(10), c char(3), u uuid, m mood, p price,
  tstz timestamptz, ts timestamp, day date, forever date,
  j json, jb jsonb, tags text[], nums integer[], grid integer[], pairs text[],
  ninf numeric, tinf timestamptz, bc date, far date, nul json, wide numeric
);
"""

COLUMNS = [
    "big", "money", "nan", "r", "d", "fnan", "huge", "i", "b",
    "t", "v", "c", "u", "m", "p",
    "tstz", "ts", "day", "forever",
    "j", "jb", "tags", "nums", "grid", "pairs",
    "ninf", "tinf", "bc", "far", "nul", "wide",
]  # fmt: skip

ROW = """
insert into kinds values (
  7,
  12345678901234567890.123456789, 4.10, 'NaN', 3.25, 2.718281828459045,
  'NaN', 9007199254740993, -42, true,
  'h\u00e9llo "quoted" \\ back', 'short', 'EU', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
  'happy', 12.5,
  '2026-11-30 10:00:00.123456+02', '2026-07-01 12:30:00', '2026-02-28', 'infinity',
  '{"a": [1, 2.50, {"b": null}], "n": 12345678901234567890.5, "a": "dup"}',
  '{"z": {"deep": [true, false, 1e-7]}, "n": 0.000000001}',
  '{a,NULL,"NULL",""}', '{1,2,-3}', '{{1,2},{3,4}}', '{{"a,b","c\\"d"},{NULL,e}}',
  '-Infinity', 'infinity', '0044-03-15 BC', '12345-01-01', '{"k\\u0000": "a\\u0000b"}',
  -123456789012345678901234567890
)
"""

RULEBOOK = """\
version: 1
timezone: Europe/Ljubljana
tables:
  public.kinds:
    user_id: id
identify:
  - table: kinds
    on: insert
    traits:
""" + "".join(f"      {column}: {column}\n" for column in COLUMNS)


def ship_row(db: str, receiver: FakeRudderStack, tmp_path: Path) -> ReceivedCall:
    """Create the table, insert ``ROW`` under a running daemon, return its one call."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(RULEBOOK)
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        sql(db, ROW)
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 0
    assert set(receiver.statuses()) == {200}  # the strict fake took every request
    assert len(receiver.calls) == 1
    return receiver.calls[0]


def traits_of(call: ReceivedCall) -> dict[str, Any]:
    payload = call.exact_payload()
    assert payload["userId"] == "7"
    assert payload["context"]["traits"] == payload["traits"]
    traits: dict[str, Any] = payload["traits"]
    return traits


def test_every_type_arrives_converted_by_its_declared_type(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    call = ship_row(db, receiver, tmp_path)
    traits = traits_of(call)
    assert sorted(traits) == sorted(COLUMNS)
    raw = call.raw

    # Exact numerics: every digit and the scale, as bare JSON numbers.
    assert b'"big":12345678901234567890.123456789' in raw
    assert b'"money":4.10' in raw
    assert b'"p":12.50' in raw  # a domain over numeric(10,2) keeps its scale
    # wal2json 2.5 writes NaN as null: the trait is null, never NaN.
    assert traits["nan"] is None
    assert traits["fnan"] is None
    assert b"NaN" not in raw
    assert b'"r":3.25' in raw
    assert b'"d":2.718281828459045' in raw
    assert b'"huge":9007199254740993' in raw  # beyond 2^53: not through a float
    assert b'"wide":-123456789012345678901234567890' in raw  # beyond 64 bits
    assert traits["i"] == -42
    assert traits["b"] is True

    # Text: exact, padding stripped from char(n), uuid and enum as text.
    assert traits["t"] == 'h\u00e9llo "quoted" \\ back'
    assert traits["v"] == "short"
    assert traits["c"] == "EU"
    assert traits["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert traits["m"] == "happy"

    # Times: ISO 8601 with an offset; zone-less values in the rulebook's zone.
    assert traits["tstz"] == "2026-11-30T08:00:00.123456Z"
    assert traits["ts"] == "2026-07-01T12:30:00+02:00"  # Ljubljana, summer time
    assert traits["day"] == "2026-02-28"
    assert traits["forever"] == "infinity"  # documented: stays as printed

    # json and jsonb: nested documents, numbers exact.
    assert traits["j"] == {"a": "dup", "n": Decimal("12345678901234567890.5")}
    assert b"12345678901234567890.5" in raw
    assert traits["jb"] == {
        "n": Decimal("0.000000001"),
        "z": {"deep": [True, False, Decimal("1E-7")]},
    }
    assert b'"n":0.000000001' in raw

    # Arrays: NULL and "NULL" differ; integers are numbers; two dimensions nest.
    assert traits["tags"] == ["a", None, "NULL", ""]
    assert traits["nums"] == [1, 2, -3]
    assert traits["grid"] == [[1, 2], [3, 4]]
    assert traits["pairs"] == [["a,b", 'c"d'], [None, "e"]]

    # Values Python cannot represent stay as printed; a numeric infinity is null.
    assert traits["ninf"] is None
    assert b"Infinity" not in raw
    assert traits["tinf"] == "infinity"
    assert traits["bc"] == "0044-03-15 BC"
    assert traits["far"] == "12345-01-01"
    # json keeps \u0000 (jsonb refuses it): NUL is stripped, not shipped.
    assert traits["nul"] == {"k": "ab"}
    assert b"\\u0000" not in raw


def test_wall_times_around_clock_changes_are_read_as_postgresql_reads_them(
    db: str,
) -> None:
    """A timestamp column's wall time the clocks show twice is the later one; one
    they skip keeps the offset from before: as PostgreSQL turns it into a time."""
    walls = [
        f"2026-{day} {hour:02d}:{minute:02d}:00"
        for day in ("03-29", "03-08", "10-25", "11-01")
        for hour in range(6)
        for minute in (0, 30)
    ]
    for zone in ("Europe/Berlin", "America/New_York"):
        convert = converter_for("timestamp without time zone", ZoneInfo(zone))
        with psycopg.connect(db) as conn:
            conn.execute(f"set timezone = '{zone}'")
            server = [
                conn.execute("select %s::timestamp::timestamptz", (wall,)).fetchone()[0]  # type: ignore[index]
                for wall in walls
            ]
        ours = [convert(wall) for wall in walls]
        assert [t.astimezone(UTC) for t in ours] == [
            t.astimezone(UTC) for t in server
        ], zone


def test_a_wall_time_at_the_end_of_the_calendar_is_sent_and_compared(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """9999-12-31 23:59:59 in New York is an instant in year 10000, past what
    Python holds: it goes out as printed, as year 10000 does, and compares after
    every time, instead of stopping the daemon."""
    sql(
        db,
        "create table contracts (id int primary key, valid_to timestamp)",
        "alter table contracts replica identity full",
    )
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(
        "version: 1\ntimezone: America/New_York\ntables:\n  public.contracts:\n"
        "    user_id: id\nidentify:\n  - table: public.contracts\n    traits:\n"
        "      valid_to: valid_to\ntrack:\n  - event: Open Ended\n"
        "    table: public.contracts\n    on: insert\n"
        "    when: valid_to > '2100-01-01'\n"
        "  - event: Ends\n    table: public.contracts\n    on: insert\n"
        "    when: valid_to < '9999-12-31 22:00'\n"
    )
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        sql(
            db,
            "insert into contracts values (1, '9999-12-31 23:59:59')",
            "insert into contracts values (2, '2026-01-01 00:00:00')",
        )
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 0

    sent = {
        (call.user_id, call.payload["type"], call.payload.get("event")): call.payload
        for call in receiver.calls
    }
    assert sent[("1", "identify", None)]["traits"] == {
        "valid_to": "9999-12-31 23:59:59"
    }
    assert sent[("2", "identify", None)]["traits"] == {
        "valid_to": "2026-01-01T00:00:00-05:00"
    }
    assert sorted(key for key in sent if key[1] == "track") == [
        ("1", "track", "Open Ended"),
        ("2", "track", "Ends"),
    ]


def test_bytea_is_hex_digits_alone_in_an_array_too(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """wal2json cuts the \\x off a bytea, not off an array's elements: cut both."""
    sql(db, "create table blobs (id int primary key, b bytea, bs bytea[])")
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(
        "version: 1\ntables:\n  public.blobs:\n    user_id: id\nidentify:\n"
        "  - table: public.blobs\n    traits:\n      b: b\n      bs: bs\n"
    )
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        sql(
            db, "insert into blobs values (1, '\\x00ff10', array['\\x00'::bytea, null])"
        )
        daemon.caught_up()
    assert [call.payload["traits"] for call in receiver.calls] == [
        {"b": "00ff10", "bs": ["00", None]}
    ]


def test_a_wall_time_whose_offset_has_seconds_is_sent_as_its_exact_instant(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """Amsterdam kept local mean time until 1937 (+00:19:32): RFC 3339 writes
    offsets in minutes, so such a time goes out in UTC, as the instant the server
    reads (a trait, and string() of it), not rounded to +00:20."""
    sql(db, "create table visits (id int primary key, at timestamp)")
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(
        "version: 1\ntimezone: Europe/Amsterdam\ntables:\n  public.visits:\n"
        "    user_id: id\nidentify:\n  - table: public.visits\n    traits:\n"
        "      at: at\n      text: string(at)\n"
    )
    walls = ["1850-06-01 12:00:00", "1937-07-01 00:00:00", "2026-06-01 12:00:00"]
    with psycopg.connect(db) as conn:
        conn.execute("set timezone = 'UTC'")
        server = [
            str(
                conn.execute(
                    "select to_char((%s::timestamp at time zone 'Europe/Amsterdam')"
                    " at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
                    (wall,),
                ).fetchone()[0]  # type: ignore[index]
            )
            for wall in walls
        ]
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        sql(
            db,
            *(
                f"insert into visits values ({n}, '{wall}')"
                for n, wall in enumerate(walls)
            ),
        )
        daemon.caught_up()

    traits = {call.user_id: call.payload["traits"] for call in receiver.calls}
    assert traits["0"] == {"at": server[0], "text": server[0]}
    assert server[0] == "1850-06-01T11:40:28Z"
    # A skipped wall time keeps the offset from before (+00:19:32 then).
    assert traits["1"] == {"at": server[1], "text": server[1]}
    # Offsets in whole minutes are written as they were.
    assert traits["2"] == {
        "at": "2026-06-01T12:00:00+02:00",
        "text": "2026-06-01T12:00:00+02:00",
    }
