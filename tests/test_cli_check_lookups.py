"""``cdc-tracker check --dsn`` on a rulebook with lookups, run as the console script."""

from __future__ import annotations

from pathlib import Path

from psycopg.conninfo import make_conninfo

from tests.harness import sql
from tests.test_cli_check import cdc_tracker

RULEBOOK = """\
version: 1
tables:
  public.payouts:
    user_id: merchant.shop_domain
    lookups:
      merchant:
        table: public.merchants
        key: {id: merchant_id}
      owner:
        table: public.owners
        key: {id: merchant_id}
track:
  - event: Payout Fetched
    table: public.payouts
    on: insert
    properties:
      plan: merchant.plan
"""


def test_check_with_dsn_names_the_missing_lookup_table_and_column(
    db: str, tmp_path: Path
) -> None:
    path = tmp_path / "lookups.yaml"
    path.write_text(RULEBOOK)
    done = cdc_tracker("check", path, "--dsn", db)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{path}:9: lookup 'owner': table 'public.owners' does not exist",
        f"{path}:17: properties.plan: column 'plan' of lookup 'merchant' is not in "
        "public.merchants; did you mean 'plan_name'?",
    ]


def test_check_with_dsn_accepts_a_fitting_lookup(db: str, tmp_path: Path) -> None:
    path = tmp_path / "lookups.yaml"
    text = RULEBOOK.replace("merchant.plan\n", "merchant.plan_name\n")
    path.write_text(
        text.replace(
            "      owner:\n        table: public.owners\n"
            "        key: {id: merchant_id}\n",
            "",
        )
    )
    done = cdc_tracker("check", path, "--dsn", db)
    assert done.returncode == 0, done.stderr
    assert "ok (structure, expressions and the live schema): 1 table, 1 rule" in (
        done.stdout
    )


def test_check_without_dsn_refuses_an_undeclared_lookup(tmp_path: Path) -> None:
    path = tmp_path / "lookups.yaml"
    path.write_text(RULEBOOK.replace("merchant.plan\n", "merchnt.plan\n"))
    done = cdc_tracker("check", path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"{path}:17: properties.plan: 'merchnt.plan' names no lookup; "
        "did you mean 'merchant'?"
    ]


def test_check_with_dsn_names_a_lookup_table_the_role_may_not_read(
    db: str, tmp_path: Path
) -> None:
    """Every change of the rule would be a dead letter (permission denied)."""
    sql(
        db,
        "create table owners (id bigint primary key, name text)",
        "create role check_reader login",
        "grant select on merchants, payouts to check_reader",
    )
    path = tmp_path / "lookups.yaml"
    path.write_text(RULEBOOK)
    try:
        done = cdc_tracker(
            "check", path, "--dsn", make_conninfo(db, user="check_reader")
        )
    finally:
        sql(db, "drop owned by check_reader", "drop role check_reader")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"{path}:9: lookup 'owner': this role may not read public.owners; fix: "
        'GRANT SELECT ON public.owners TO "check_reader";',
        f"{path}:17: properties.plan: column 'plan' of lookup 'merchant' is not in "
        "public.merchants; did you mean 'plan_name'?",
    ]


def test_check_with_dsn_names_the_schema_a_lookup_table_is_shut_in(
    db: str, tmp_path: Path
) -> None:
    """SELECT on the table is not enough: its schema needs USAGE too."""
    sql(
        db,
        "create schema crm",
        "create table crm.owners (id bigint primary key, name text)",
        "create role check_schema_reader login",
        "grant select on merchants, payouts, crm.owners to check_schema_reader",
    )
    path = tmp_path / "lookups.yaml"
    path.write_text(
        RULEBOOK.replace("public.owners", "crm.owners").replace(
            "plan: merchant.plan", "plan: merchant.plan_name"
        )
    )
    try:
        done = cdc_tracker(
            "check", path, "--dsn", make_conninfo(db, user="check_schema_reader")
        )
    finally:
        sql(db, "drop owned by check_schema_reader", "drop role check_schema_reader")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"{path}:9: lookup 'owner': this role may not read crm.owners; fix: "
        'GRANT USAGE ON SCHEMA crm TO "check_schema_reader";',
    ]
