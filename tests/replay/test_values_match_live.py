"""A row read by replay becomes the very change wal2json gives the live daemon."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from cdc_tracker.mapping.values import converter_for
from cdc_tracker.model import Change
from cdc_tracker.replay.changes import ChangeMaker
from cdc_tracker.replay.reader import TableReader, open_pool
from cdc_tracker.source.catalog import read_catalog
from cdc_tracker.source.slot import connect
from tests.harness import live_changes, sql

TYPES_TABLE = """
create domain money_amount as numeric(12,2);
create type mood as enum ('happy', 'sad');
create table kinds (
  id bigserial primary key, small smallint, whole integer, oid_col oid,
  exact numeric(30,9), loose numeric, real_col real, double_col double precision,
  amount money_amount, flag boolean, word text, short varchar(8), code char(5),
  ident uuid, feeling mood, moment timestamptz, wall timestamp, day date,
  doc json, bin jsonb, tags text[], counts int[], amounts numeric(6,2)[],
  grid int[][], span interval, addr inet, blob bytea,
  updated_at timestamptz not null default now())
"""

ROWS = [
    "insert into kinds (small, whole, oid_col, exact, loose, real_col, double_col,"
    " amount, flag, word, short, code, ident, feeling, moment, wall, day, doc, bin,"
    " tags, counts, amounts, grid, span, addr) values (-3, 2147483647, 4000000000,"
    " 98765432109876543210.000000001, 4.10, 1.5, 2.5e-09, 12.50, true,"
    " 'quote \" and \\ slash', 'ab', 'EU', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',"
    " 'sad', '2026-12-04 16:42:12.123456+02', '2026-12-04 16:42:12', '2026-12-04',"
    ' \'{"a": 1.10, "a": [true, null], "n": "x\\u0000y"}\', \'{"b": 2.50}\','
    " '{\"x,y\",NULL,\"NULL\"}', '{1,NULL,3}', '{1.10,2.00}', '{{1,2},{3,4}}',"
    " '1 day 02:00:00', '10.0.0.1/8')",
    "insert into kinds (exact, loose, real_col, double_col, amount, flag, moment,"
    " wall, day) values ('NaN', 'Infinity', '-Infinity', 'NaN', 0, false,"
    " 'infinity', '-infinity', '4713-01-01 BC')",
    "insert into kinds (loose, double_col, code, blob) values (100, 1e100, '   ',"
    " '\\x00ff')",
    "insert into kinds (real_col, double_col, blob) values ('-0', '-0', '')",
    "insert into kinds default values",
]


def _replayed_changes(dsn: str) -> list[Change]:
    with connect(dsn) as conn:
        info = read_catalog(conn, ["public.kinds"])["public.kinds"]
    pool: ConnectionPool = open_pool(dsn)
    with pool:
        reader = TableReader(pool, info, "updated_at", page_rows=2)
        maker = ChangeMaker(info, reader.type_oids(), "updated_at", UTC)
        rows = [row for page in reader.pages("-infinity", "infinity") for row in page]
    return [maker.change(row, n) for n, row in enumerate(rows)]


def _converted(change: Change) -> dict[str, Any]:
    assert change.new is not None
    return {
        name: None if raw is None else converter_for(change.types[name], UTC)(raw)
        for name, raw in change.new.items()
    }


def test_replayed_values_equal_the_live_ones_raw_and_converted(empty_db: str) -> None:
    sql(empty_db, TYPES_TABLE)
    live = live_changes(empty_db, ROWS, ["public.kinds"])
    replayed = sorted(_replayed_changes(empty_db), key=lambda c: c.new["id"])  # type: ignore[index]

    assert len(live) == len(ROWS) == len(replayed)
    for before, after in zip(live, replayed, strict=True):
        assert after.new == before.new
        assert {k: type(v) for k, v in after.new.items()} == {  # type: ignore[union-attr]
            k: type(v)
            for k, v in before.new.items()  # type: ignore[union-attr]
        }
        assert after.types == before.types
        assert after.key == before.key
        assert _converted(after) == _converted(before)


def test_replayed_change_is_an_insert_stamped_with_its_cursor(empty_db: str) -> None:
    sql(
        empty_db,
        TYPES_TABLE,
        "insert into kinds (updated_at) values ('2026-11-02 10:00:00.5+01')",
    )

    (change,) = _replayed_changes(empty_db)

    assert change.action.value == "insert"
    assert change.old is None
    assert change.commit_time == datetime(2026, 11, 2, 9, 0, 0, 500000, tzinfo=UTC)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris"])
def test_session_settings_do_not_depend_on_the_server_defaults(
    empty_db: str, zone: str
) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(f"alter database {conn.info.dbname} set timezone = '{zone}'")
        conn.execute(f"alter database {conn.info.dbname} set datestyle = 'SQL, DMY'")
    sql(empty_db, TYPES_TABLE, ROWS[0])

    (change,) = _replayed_changes(empty_db)

    assert change.new is not None
    assert change.new["moment"] == "2026-12-04 14:42:12.123456+00"
    assert change.new["day"] == "2026-12-04"
