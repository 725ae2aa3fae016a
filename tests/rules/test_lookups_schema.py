"""Lookups checked against the live catalog: tables, key columns, columns and types."""

from __future__ import annotations

import textwrap
from pathlib import Path

from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.rules.schema import check_schema
from cdc_tracker.source.catalog import read_catalog
from cdc_tracker.source.slot import connect

PAYOUTS = """\
version: 1
tables:
  public.payouts:
    user_id: merchant.shop_domain
    lookups:
      merchant:
        table: {table}
        key: {key}
track:
  - event: Payout Fetched
    table: public.payouts
    on: {on}
    properties:
      plan: {plan}
"""


def check(dsn: str, tmp_path: Path, text: str) -> list[str]:
    """The problems as ``line: message``, the catalog read as the daemon reads it."""
    path = tmp_path / "rulebook.yaml"
    path.write_text(textwrap.dedent(text))
    rulebook = load_rulebook(path)
    with connect(dsn) as conn:
        catalog = read_catalog(conn, rulebook.schema_tables)
    return [
        f"{line}: {message}" for _, line, message in check_schema(rulebook, catalog)
    ]


def payouts(
    table: str = "merchants",
    key: str = "{id: merchant_id}",
    plan: str = "merchant.plan_name",
    on: str = "insert",
) -> str:
    return PAYOUTS.format(table=table, key=key, plan=plan, on=on)


def test_a_lookup_of_an_untracked_table_fits(db: str, tmp_path: Path) -> None:
    assert check(db, tmp_path, payouts()) == []


def test_missing_lookup_table_is_reported_once_at_its_declaration(
    db: str, tmp_path: Path
) -> None:
    assert check(db, tmp_path, payouts(table="shops")) == [
        "6: lookup 'merchant': table 'public.shops' does not exist"
    ]


def test_key_columns_are_checked_on_both_tables(db: str, tmp_path: Path) -> None:
    found = check(db, tmp_path, payouts(key="{idd: merchant_idd}"))
    assert found == [
        "6: lookup 'merchant': key column 'idd' is not in public.merchants; "
        "did you mean 'id'?",
        "6: lookup 'merchant': key column 'merchant_idd' is not in public.payouts; "
        "did you mean 'merchant_id'?",
    ]


def test_key_columns_of_different_kinds_cannot_match(db: str, tmp_path: Path) -> None:
    assert check(db, tmp_path, payouts(key="{shop_domain: merchant_id}")) == [
        "6: lookup 'merchant': key public.merchants.shop_domain (text) cannot "
        "match public.payouts.merchant_id (bigint)"
    ]


def test_unknown_lookup_column_names_the_related_table(db: str, tmp_path: Path) -> None:
    assert check(db, tmp_path, payouts(plan="merchant.plan_nme")) == [
        "14: properties.plan: column 'plan_nme' of lookup 'merchant' is not in "
        "public.merchants; did you mean 'plan_name'?"
    ]


def test_lookup_columns_are_type_checked_with_their_declared_type(
    db: str, tmp_path: Path
) -> None:
    found = check(db, tmp_path, payouts(plan="lower(merchant.current_monthly_total)"))
    assert found == [
        "14: properties.plan: lower() expects text, got number (column "
        "merchant.current_monthly_total) at column 7 (table public.payouts)"
    ]


def test_a_delete_rule_needs_the_lookup_key_in_the_old_row(
    db: str, tmp_path: Path
) -> None:
    """Without REPLICA IDENTITY FULL a deleted payout carries only its id."""
    found = check(db, tmp_path, payouts(on="delete"))
    assert found == [
        "10: rule 'Payout Fetched' reads merchant_id of deleted rows, but table "
        "public.payouts has REPLICA IDENTITY DEFAULT; fix: ALTER TABLE "
        "public.payouts REPLICA IDENTITY FULL;"
    ]
