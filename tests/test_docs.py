"""``cdc-tracker docs``: the tracking plan drawn from a rulebook, and the live types.

The golden files under tests/golden/ are the reviewed output for the example
rulebook; after a deliberate change to the format, regenerate them with
``CDC_TRACKER_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_docs.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from cdc_tracker.cli import main
from cdc_tracker.rules.docs import render_plan
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.source.catalog import read_catalog
from cdc_tracker.source.slot import connect

GOLDEN = Path(__file__).resolve().parent / "golden"

RICH_RULEBOOK = """\
version: 1
tables:
  public.payouts:
    user_id: merchant_id
    lookups:
      merchant:
        table: public.merchants
        key: {id: merchant_id}
        missing: skip
identify:
  - id: payout traits
    table: public.payouts
    traits:
      shop:
        domain: merchant.shop_domain
        plan:
          name: merchant.plan_name
      ghost: no_such_column
track:
  - event: Big Payout
    id: big payout
    table: payouts
    on: [insert, update]
    when: amount > 1000 or status in ('paid', 'a|b')
    user_id: concat('m-', merchant_id)
    integrations: {All: false, Mailchimp: true}
    context: {app: {name: admin, version: 4.10, since: 2026-01-01}}
    description: >
      Sent when a payout is
      large.
    properties:
      amount: amount
      label: lower(status)
      hashed: sha256(string(merchant_id))
      tier: 2
      flagged: "'yes'"
"""


def _check_golden(text: str, name: str) -> None:
    path = GOLDEN / name
    if os.environ.get("CDC_TRACKER_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), (
        f"docs output differs from {path}; if the change is meant, regenerate it "
        "with CDC_TRACKER_UPDATE_GOLDEN=1"
    )


def test_docs_of_the_example_rulebook_match_the_golden_file(
    example_rulebook: Path, tmp_path: Path
) -> None:
    """Without --dsn the plan lists every rule, field and column, without types."""
    out = tmp_path / "plan.md"
    assert main(["docs", str(example_rulebook), "-o", str(out)]) == 0
    _check_golden(out.read_text(encoding="utf-8"), "example_plan.md")


def test_docs_with_dsn_take_types_from_the_live_schema(
    db: str, example_rulebook: Path, tmp_path: Path
) -> None:
    """With --dsn each trait and property carries its declared type and kind."""
    out = tmp_path / "plan.md"
    assert main(["docs", str(example_rulebook), "--dsn", db, "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    _check_golden(text, "example_plan_typed.md")
    assert db not in text
    assert "| `currentMonthlyTotal` |" in text
    assert "`numeric(12,2)` (number)" in text


def test_docs_write_to_stdout_by_default(
    example_rulebook: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without -o the plan goes to stdout, the same text as the golden file."""
    assert main(["docs", str(example_rulebook)]) == 0
    assert capsys.readouterr().out == (GOLDEN / "example_plan.md").read_text()


def test_docs_of_an_invalid_rulebook_exit_2_with_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rulebook that does not validate is refused with file and line, no output."""
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text("version: 1\ntables:\n  merchants: {cursor: id}\n")
    out = tmp_path / "plan.md"
    assert main(["docs", str(rulebook), "-o", str(out)]) == 2
    assert (
        f"{rulebook}:3: table 'merchants' has no 'user_id'" in capsys.readouterr().err
    )
    assert not out.exists()


def test_docs_show_nested_traits_lookups_and_computed_types(
    db: str, tmp_path: Path
) -> None:
    """Dotted paths, lookups, integrations, context, description and the kind of
    computed and literal values; a column the table lacks is marked, not fatal."""
    path = tmp_path / "rich.yaml"
    path.write_text(RICH_RULEBOOK)
    rulebook = load_rulebook(path)
    with connect(db) as conn:
        catalog = read_catalog(conn, rulebook.schema_tables)
    text = render_plan(rulebook, catalog)
    lines = text.splitlines()
    assert any(
        line.startswith("| `shop.plan.name` | `merchant.plan_name` | ")
        and line.endswith("| expression (text) |")
        for line in lines
    )
    assert (
        "| `ghost` | `no_such_column` | `no_such_column` | **column not found** |"
        in (lines)
    )
    assert "| `amount` | `amount` | `amount` | `numeric(12,2)` (number) |" in lines
    assert "| `label` | `lower(status)` | `status` | expression (text) |" in lines
    assert "| `tier` | `2` | none | literal (number) |" in lines
    assert "| `flagged` | `'yes'` | none | literal (text) |" in lines
    assert "### Big Payout" in lines
    assert "- **Rule id:** `big payout`" in lines
    assert "- **On:** insert, update" in lines
    assert "- **When:** `amount > 1000 or status in ('paid', 'a\\|b')`" in lines
    assert "- **userId:** `concat('m-', merchant_id)`" in lines
    assert "- **Integrations:** `All` off, `Mailchimp` on" in lines
    assert (
        '- **Context:** `{"app": {"name": "admin", "since": "2026-01-01", '
        '"version": 4.10}}`'
    ) in lines
    assert "- **Description:** Sent when a payout is large." in lines
    assert (
        "- **Lookup** `merchant`: the row of `public.merchants` where "
        "`id = merchant_id` (when none matches: skip)"
    ) in lines
    assert render_plan(rulebook, catalog) == text  # deterministic


def test_docs_mark_a_table_missing_from_the_database(
    empty_db: str, example_rulebook: Path
) -> None:
    """Drawn before the schema exists, the plan says which tables are missing."""
    rulebook = load_rulebook(example_rulebook)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("create table merchants (id bigint primary key)")
    with connect(empty_db) as conn:
        catalog = read_catalog(conn, rulebook.schema_tables)
    text = render_plan(rulebook, catalog)
    assert (
        "| `public.payouts` | `merchant_id` | `created_at` | 1 | **table not found** |"
        in (text)
    )
    assert "| `amount` | `amount` | `amount` | **table not found** |" in text
    assert "| `email` | `email` | `email` | **column not found** |" in text


def test_docs_list_a_lookups_key_among_the_columns_read(tmp_path: Path) -> None:
    """A rule that reads only merchant.x still reads the row's merchant_id."""
    path = tmp_path / "lookup.yaml"
    path.write_text(
        "version: 1\ntables:\n  public.payouts:\n    user_id: merchant.shop_domain\n"
        "    lookups:\n      merchant:\n        table: public.merchants\n"
        "        key: {id: merchant_id}\n"
        "track:\n  - event: Payout Fetched\n    table: public.payouts\n"
        "    on: insert\n"
    )
    lines = render_plan(load_rulebook(path)).splitlines()
    assert "- **Columns read:** `merchant_id`" in lines


def test_docs_show_a_number_literal_as_the_calls_carry_it(tmp_path: Path) -> None:
    """2.9e3 is sent as 2.9E+3, and shown so; 4.10 keeps its zero."""
    path = tmp_path / "literals.yaml"
    path.write_text(
        "version: 1\ntables:\n  public.merchants:\n    user_id: id\n"
        "track:\n  - event: E\n    table: public.merchants\n    on: insert\n"
        "    properties: {big: 2.9e3, exact: 4.10, word: \"'x'\"}\n"
    )
    lines = render_plan(load_rulebook(path)).splitlines()
    assert "| `big` | `2.9E+3` | none |" in lines
    assert "| `exact` | `4.10` | none |" in lines
    assert "| `word` | `'x'` | none |" in lines
