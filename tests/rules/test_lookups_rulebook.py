"""Lookups in the rulebook: declarations, references, a located message per mistake."""

from __future__ import annotations

from pathlib import Path

from cdc_tracker.rules.expr import LookupRef, parse_expression
from tests.rules.test_rulebook import load, only_problem, problems

PAYOUTS = """\
version: 1
tables:
  public.payouts:
    user_id: merchant.shop_domain
    lookups:
      merchant:
        table: merchants
        key: {id: merchant_id}
        missing: skip
track:
  - event: Payout Fetched
    table: public.payouts
    on: insert
"""


def test_a_dotted_name_other_than_new_or_old_is_a_lookup_reference() -> None:
    expression = parse_expression("concat(merchant.shop_domain, '/', new.id)")
    assert expression.lookups == {LookupRef("merchant", "shop_domain")}
    assert {ref.column for ref in expression.columns} == {"id"}


def test_python_attribute_names_are_only_column_names_of_a_lookup() -> None:
    """``x.__class__`` reads a column called ``__class__``; nothing reaches Python."""
    expression = parse_expression("x.__class__")
    assert expression.lookups == {LookupRef("x", "__class__")}


def test_table_lookup_is_parsed_and_shared_by_its_rules(tmp_path: Path) -> None:
    rulebook = load(tmp_path, PAYOUTS)
    spec = rulebook.tables["public.payouts"].lookups["merchant"]
    assert (spec.table, spec.key, spec.missing) == (
        "public.merchants",
        (("id", "merchant_id"),),
        "skip",
    )
    assert spec.describe_key() == "id = merchant_id"
    assert rulebook.rules[0].lookups == {"merchant": spec}
    assert rulebook.schema_tables == ["public.merchants", "public.payouts"]


def test_rule_lookups_add_to_the_tables_and_default_to_dead_letter(
    tmp_path: Path,
) -> None:
    rulebook = load(
        tmp_path,
        PAYOUTS
        + """\
    lookups:
      owner:
        table: public.owners
        key: {merchant_id: merchant_id, region: region}
    properties:
      owner: owner.name
      shop: merchant.shop_domain
""",
    )
    rule = rulebook.rules[0]
    assert sorted(rule.lookups) == ["merchant", "owner"]
    assert rule.lookups["owner"].missing == "dead_letter"
    assert rule.lookups["owner"].key == (
        ("merchant_id", "merchant_id"),
        ("region", "region"),
    )
    assert "public.owners" in rulebook.schema_tables


def test_unknown_lookup_prefix_is_located_with_a_hint(tmp_path: Path) -> None:
    text = PAYOUTS + "    properties:\n      plan: merchnt.plan_name\n"
    assert only_problem(tmp_path, text) == (
        "15: properties.plan: 'merchnt.plan_name' names no lookup; "
        "did you mean 'merchant'?"
    )


def test_lookup_reference_without_any_lookup_says_where_to_declare(
    tmp_path: Path,
) -> None:
    text = """\
    version: 1
    tables:
      public.payouts:
        user_id: merchant.shop_domain
    """
    assert only_problem(tmp_path, text) == (
        "4: user_id: 'merchant.shop_domain' names no lookup; declare it under "
        "'lookups' on the table or the rule"
    )


def test_a_rule_lookup_is_not_visible_to_another_rule(tmp_path: Path) -> None:
    text = """\
    version: 1
    tables:
      public.payouts:
        user_id: merchant_id
    track:
      - event: A
        table: payouts
        on: insert
        lookups:
          merchant: {table: merchants, key: {id: merchant_id}}
        properties: {plan: merchant.plan_name}
      - event: B
        table: payouts
        on: insert
        when: merchant.plan_name == 'pro'
    """
    assert only_problem(tmp_path, text) == (
        "15: when: 'merchant.plan_name' names no lookup; "
        "declare it under 'lookups' on the table or the rule"
    )


def test_bad_key_missing_policy_and_name_are_each_reported(tmp_path: Path) -> None:
    text = """\
    version: 1
    tables:
      public.payouts:
        user_id: merchant_id
        lookups:
          merchant: {table: merchants, key: merchant_id}
          shop: {table: merchants, key: {id: merchant_id}, missing: ignore}
          new: {table: merchants, key: {id: merchant_id}}
          owner: {key: {id: merchant_id}, colour: red}
    """
    assert problems(tmp_path, text) == [
        "6: lookup 'merchant' needs 'key': columns of its table mapped to columns "
        "of this row, such as {id: merchant_id}",
        "7: lookup 'shop': 'missing' is skip or dead_letter, not 'ignore'",
        "8: lookup name 'new' must be a plain name (letters, digits, _) other than "
        "new, old and the expression keywords",
        "9: unknown key 'colour' in lookup 'owner'; expected one of description, "
        "key, missing, table",
        "9: lookup 'owner' needs 'table': the table to read",
    ]


def test_a_rule_may_not_redeclare_its_tables_lookup(tmp_path: Path) -> None:
    text = PAYOUTS + (
        "    lookups:\n      merchant: {table: merchants, key: {id: merchant_id}}\n"
    )
    assert only_problem(tmp_path, text) == (
        "15: lookup 'merchant' is already declared on its table; "
        "give this one another name"
    )


def test_lookups_must_be_a_mapping(tmp_path: Path) -> None:
    text = PAYOUTS.replace(
        "    lookups:\n      merchant:\n        table: merchants\n"
        "        key: {id: merchant_id}\n        missing: skip\n",
        "    lookups: [merchants]\n",
    ).replace("merchant.shop_domain", "merchant_id")
    assert only_problem(tmp_path, text) == (
        "5: 'lookups' maps a name to a mapping with 'table' and 'key'"
    )
