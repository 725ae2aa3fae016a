"""The lookup provider on a real server: conversion, cache, and failures by kind."""

from __future__ import annotations

import socket
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from cdc_tracker.errors import SourceUnavailable
from cdc_tracker.mapping import lookups as lookups_module
from cdc_tracker.mapping.lookups import Lookups
from cdc_tracker.mapping.ttl_cache import TtlCache
from cdc_tracker.rules.expr import EvaluationError
from cdc_tracker.rules.rulebook import Rulebook, load_rulebook
from tests.harness import sql

RULEBOOK = """\
version: 1
tables:
  public.payouts:
    user_id: merchant.shop_domain
    lookups:
      merchant: {table: merchants, key: {id: merchant_id}}
track:
  - event: Payout Fetched
    table: payouts
    on: insert
    properties:
      total: merchant.current_monthly_total
      fetched: merchant.last_payout_fetch
      backdate: merchant.can_backdate
      currency: merchant.currency
"""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rulebook(tmp_path: Path, text: str = RULEBOOK) -> Rulebook:
    path = tmp_path / "rulebook.yaml"
    path.write_text(textwrap.dedent(text))
    return load_rulebook(path)


def test_no_lookups_means_no_provider(tmp_path: Path) -> None:
    text = "version: 1\ntables:\n  public.payouts:\n    user_id: merchant_id\n"
    assert Lookups.for_rulebook(rulebook(tmp_path, text), "dbname=unused") is None


def test_related_row_holds_the_used_columns_converted_by_type(
    db: str, tmp_path: Path
) -> None:
    sql(
        db,
        "insert into merchants (id, shop_domain, current_monthly_total, currency, "
        "last_payout_fetch, can_backdate) values (5, 'five.example', 1234567890.10, "
        "'EU', '2026-11-30 10:00:00.123456+02', true)",
    )
    book = rulebook(tmp_path)
    spec = book.tables["public.payouts"].lookups["merchant"]
    with Lookups.for_rulebook(book, db) as found:  # type: ignore[union-attr]
        row = found.row(spec, (5,))
        assert found.row(spec, (6,)) is None
        assert found.row(spec, (None,)) is None  # a null key matches nothing
    assert row == {
        "shop_domain": "five.example",
        "current_monthly_total": Decimal("1234567890.10"),
        "last_payout_fetch": datetime(2026, 11, 30, 8, 0, 0, 123456, tzinfo=UTC),
        "can_backdate": True,
        "currency": "EU",
    }
    assert found.pool.closed


def test_cache_serves_rows_and_absences_until_the_ttl(db: str, tmp_path: Path) -> None:
    sql(db, "insert into merchants (id, shop_domain) values (5, 'five.example')")
    book = rulebook(tmp_path)
    spec = book.tables["public.payouts"].lookups["merchant"]
    clock = Clock()
    with Lookups.for_rulebook(book, db) as found:  # type: ignore[union-attr]
        found.cache = TtlCache(10, 60.0, clock)

        def shop(merchant: int) -> str | None:
            row = found.row(spec, (merchant,))
            return None if row is None else row["shop_domain"]

        assert (shop(5), shop(6)) == ("five.example", None)
        sql(db, "insert into merchants (id, shop_domain) values (6, 'six.example')")
        sql(db, "update merchants set shop_domain = 'v.example' where id = 5")
        clock.now = 59.0
        assert (shop(5), shop(6)) == ("five.example", None)
        clock.now = 60.0
        assert (shop(5), shop(6)) == ("v.example", "six.example")
        assert (found.stats.queries, found.stats.cache_hits) == (4, 2)


def test_cache_evicts_the_least_recently_used_entry() -> None:
    cache = TtlCache(2, 60.0, Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == (True, 1)
    cache.put("c", 3)
    assert (cache.get("b"), cache.get("a"), len(cache)) == ((False, None), (True, 1), 2)


def test_unreachable_database_is_source_unavailable_not_a_dead_letter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port nobody listens on: the pool times out, the daemon will retry."""
    monkeypatch.setattr(lookups_module, "POOL_TIMEOUT_SECONDS", 0.5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dsn = f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=1"
    book = rulebook(tmp_path)
    spec = book.tables["public.payouts"].lookups["merchant"]
    with Lookups.for_rulebook(book, dsn) as found:  # type: ignore[union-attr]
        with pytest.raises(SourceUnavailable, match="lookup merchant on public"):
            found.row(spec, (5,))
        assert found.stats.queries == 0
        assert len(found.cache) == 0


def test_dropped_lookup_column_is_an_evaluation_error(db: str, tmp_path: Path) -> None:
    sql(db, "insert into merchants (id, shop_domain) values (5, 'five.example')")
    book = rulebook(tmp_path)
    spec = book.tables["public.payouts"].lookups["merchant"]
    with Lookups.for_rulebook(book, db) as found:  # type: ignore[union-attr]
        sql(db, "alter table merchants drop column currency")
        with pytest.raises(EvaluationError, match="or a column it reads is gone"):
            found.row(spec, (5,))


def test_a_key_matching_two_rows_is_an_evaluation_error(
    db: str, tmp_path: Path
) -> None:
    sql(
        db,
        "insert into merchants (id, shop_domain, plan_name) values "
        "(1, 'a.example', 'pro'), (2, 'b.example', 'pro')",
    )
    text = RULEBOOK.replace("{id: merchant_id}", "{plan_name: status}")
    book = rulebook(tmp_path, text)
    spec = book.tables["public.payouts"].lookups["merchant"]
    found = Lookups.for_rulebook(book, db)
    assert found is not None
    with found, pytest.raises(EvaluationError, match="more than one row"):
        found.row(spec, ("pro",))


def test_a_key_the_column_cannot_hold_names_the_condition_not_the_value(
    db: str, tmp_path: Path
) -> None:
    """A text key looked up in an enum column, with a value that is no label."""
    sql(
        db,
        "create type tier as enum ('basic', 'pro')",
        "alter table merchants add column tier tier",
    )
    text = RULEBOOK.replace("{id: merchant_id}", "{tier: status}")
    book = rulebook(tmp_path, text)
    spec = book.tables["public.payouts"].lookups["merchant"]
    found = Lookups.for_rulebook(book, db)
    assert found is not None
    with found, pytest.raises(EvaluationError) as raised:
        found.row(spec, ("secret-label",))
    assert str(raised.value) == (
        "lookup merchant on public.merchants failed: InvalidTextRepresentation "
        "(SQLSTATE 22P02)"
    )
