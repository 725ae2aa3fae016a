"""The rulebook loader: what the example means, and a located message per mistake."""

from __future__ import annotations

import textwrap
from datetime import UTC
from decimal import Decimal
from hashlib import blake2b
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cdc_tracker.errors import ConfigError, RulebookError
from cdc_tracker.model import MISSING, Action
from cdc_tracker.replay.plan import make_plan
from cdc_tracker.rules.names import qualify
from cdc_tracker.rules.rulebook import Rulebook, load_rulebook
from tests.harness import EXAMPLES

TABLES = """\
version: 1
tables:
  public.t:
    user_id: id
"""


class Row:
    """A change as expressions see it: the new and the old image."""

    def __init__(self, new: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        self.images = {"new": new, "old": old or {}, "row": new}

    def value(self, image: str, column: str) -> Any:
        return self.images[image].get(column, MISSING)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rulebook.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str) -> Rulebook:
    return load_rulebook(write(tmp_path, text))


def problems(tmp_path: Path, text: str) -> list[str]:
    """Each reported problem as ``line: message`` (the path checked, then cut)."""
    path = write(tmp_path, text)
    with pytest.raises(RulebookError) as caught:
        load_rulebook(path)
    lines = str(caught.value).splitlines()
    assert all(line.startswith(f"{path}:") for line in lines), lines
    return [line.removeprefix(f"{path}:") for line in lines]


def only_problem(tmp_path: Path, text: str) -> str:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


# The example rulebook


@pytest.fixture(scope="module")
def example() -> Rulebook:
    return load_rulebook(EXAMPLES / "rulebook.yaml")


def test_example_rulebook_has_its_two_tables_with_user_id_and_cursor(
    example: Rulebook,
) -> None:
    """Both tables are qualified, with the userId expression and replay cursor."""
    assert example.version == 1
    assert example.timezone is UTC
    assert sorted(example.tables) == ["public.merchants", "public.payouts"]
    merchants, payouts = (
        example.tables["public.merchants"],
        example.tables["public.payouts"],
    )
    assert (merchants.user_id.text, merchants.cursor) == ("id", "updated_at")
    assert (payouts.user_id.text, payouts.cursor) == ("merchant_id", "created_at")


def test_example_rulebook_has_one_identify_and_four_track_rules(
    example: Rulebook,
) -> None:
    """Rule ids, kinds, tables and actions are exactly what the file says."""
    summary = [(r.kind, r.id, r.table, sorted(r.on)) for r in example.rules]
    assert summary == [
        ("identify", "identify public.merchants", "public.merchants",
         [Action.INSERT, Action.UPDATE]),
        ("track", "Merchant Installed", "public.merchants", [Action.INSERT]),
        ("track", "Xero Connection Lost", "public.merchants", [Action.UPDATE]),
        ("track", "Plan Changed", "public.merchants", [Action.UPDATE]),
        ("track", "Payout Fetched", "public.payouts", [Action.INSERT]),
    ]  # fmt: skip
    assert [r.id for r in example.rules_for("public.merchants", Action.UPDATE)] == [
        "identify public.merchants",
        "Xero Connection Lost",
        "Plan Changed",
    ]
    assert example.rules_for("public.payouts", Action.DELETE) == []


def test_example_traits_are_columns_of_the_new_row_nested_as_written(
    example: Rulebook,
) -> None:
    """A bare name reads the new row; ``company: {plan: ...}`` stays nested."""
    identify = example.rules[0]
    row = Row({"owner_name": "Ada", "plan_name": "basic", "email": "a@x"})
    traits = {key: expr.evaluate(row) for key, expr in identify.expressions()}
    assert traits["traits.name"] == "Ada"
    assert traits["traits.company.plan"] == "basic"
    assert traits["user_id"] is MISSING  # id absent from this row: left out
    assert identify.user_id.text == "id"
    assert not identify.needs_old


def test_example_quoted_literal_is_a_string_not_a_column(example: Rulebook) -> None:
    """``"'shopify'"`` is the text shopify whatever the row holds."""
    installed = example.rules[1]
    source = installed.fields["source"]
    assert not isinstance(source, dict)
    assert source.is_literal
    assert source.evaluate(Row({"shopify": "column value"})) == "shopify"


def test_example_xero_rule_fires_only_when_true_turns_false(
    example: Rulebook,
) -> None:
    """``old.x and not new.x``: needs the old row, fires on the drop alone."""
    lost = example.rules[2]
    assert lost.needs_old
    assert lost.when is not None
    fires = {
        (old, new): lost.when.holds(
            Row({"xero_connection_ok": new}, {"xero_connection_ok": old})
        )
        for old in (True, False, None)
        for new in (True, False, None)
    }
    assert [pair for pair, fired in fires.items() if fired] == [(True, False)]


def test_example_plan_changed_compares_old_and_new(example: Rulebook) -> None:
    """``changed(plan_name)`` holds only when the value differs."""
    plan = example.rules[3]
    assert plan.when is not None
    assert plan.needs_old
    assert plan.when.holds(Row({"plan_name": "pro"}, {"plan_name": "basic"}))
    assert not plan.when.holds(Row({"plan_name": "pro"}, {"plan_name": "pro"}))
    from_, to = plan.fields["from"], plan.fields["to"]
    assert not isinstance(from_, dict)
    assert not isinstance(to, dict)
    row = Row({"plan_name": "pro"}, {"plan_name": "basic"})
    assert (from_.evaluate(row), to.evaluate(row)) == ("basic", "pro")


def test_example_payout_rule_is_gated_on_paid(example: Rulebook) -> None:
    """``status == 'paid'``; the payout's userId is its merchant_id."""
    payout = example.rules[4]
    assert payout.when is not None
    assert payout.when.holds(Row({"status": "paid"}))
    assert not payout.when.holds(Row({"status": "pending"}))
    assert not payout.when.holds(Row({"status": None}))
    assert payout.user_id.text == "merchant_id"


# YAML reading


def test_on_is_read_as_a_key_not_as_yaml_1_1_true(tmp_path: Path) -> None:
    """``on:`` names the actions; PyYAML's default loader would make it ``True``."""
    rulebook = load(
        tmp_path,
        TABLES + "track:\n  - event: E\n    table: t\n    on: delete\n",
    )
    assert rulebook.rules[0].on == frozenset({Action.DELETE})
    assert rulebook.rules[0].lines["on"] == 8


def test_yes_and_no_are_column_names_not_booleans(tmp_path: Path) -> None:
    """Under YAML 1.2 only true/false are booleans: ``yes`` is an expression."""
    rulebook = load(
        tmp_path,
        TABLES + "identify:\n  - table: t\n    traits:\n      a: yes\n      b: true\n",
    )
    traits = rulebook.rules[0].fields
    assert traits["a"].is_column is not None  # type: ignore[union-attr]
    assert traits["b"].evaluate(Row({})) is True  # type: ignore[union-attr]


def test_non_string_scalars_are_literals(tmp_path: Path) -> None:
    """Numbers, booleans and null stay what YAML says; a float keeps its digits."""
    rulebook = load(
        tmp_path,
        TABLES
        + """\
identify:
  - table: t
    traits:
      n: 5
      f: 2.50
      b: false
      nothing: null
""",
    )
    row = Row({"n": "column n", "f": "column f"})
    values = {k: e.evaluate(row) for k, e in rulebook.rules[0].expressions()}
    assert values["traits.n"] == 5
    assert type(values["traits.n"]) is int
    assert values["traits.f"] == Decimal("2.5")
    assert values["traits.b"] is False
    assert values["traits.nothing"] is None


def test_nested_traits_keep_their_shape_and_lines(tmp_path: Path) -> None:
    """Mappings nest to any depth; each leaf is an expression."""
    rulebook = load(
        tmp_path,
        TABLES
        + """\
identify:
  - table: t
    traits:
      company:
        plan:
          name: plan_name
          tier: "'gold'"
      email: email
""",
    )
    keys = [key for key, _ in rulebook.rules[0].expressions()]
    assert keys == [
        "user_id",
        "traits.company.plan.name",
        "traits.company.plan.tier",
        "traits.email",
    ]


def test_timezone_names_the_zone_for_timestamps_without_one(tmp_path: Path) -> None:
    rulebook = load(tmp_path, "timezone: Europe/Ljubljana\n" + TABLES)
    assert rulebook.timezone == ZoneInfo("Europe/Ljubljana")


@pytest.mark.parametrize("name", ["UTC", "utc", "Etc/UTC", "UCT", "Zulu", "GMT"])
def test_a_zone_always_at_utc_reads_as_utc(tmp_path: Path, name: str) -> None:
    """Same values, so the same identify fingerprints, as UTC left out."""
    assert load(tmp_path, f"timezone: {name}\n" + TABLES).timezone is UTC


def test_a_zone_at_utc_today_but_not_always_keeps_its_name(tmp_path: Path) -> None:
    """Africa/Sao_Tome was at +01:00 in 2018: its timestamps are not UTC's."""
    zone = load(tmp_path, "timezone: Africa/Sao_Tome\n" + TABLES).timezone
    assert zone == ZoneInfo("Africa/Sao_Tome")


def test_rulebook_without_rules_loads(tmp_path: Path) -> None:
    """No identify and no track section (or an empty one) is not an error."""
    assert load(tmp_path, TABLES).rules == []
    assert load(tmp_path, TABLES + "identify:\ntrack:\n").rules == []


def test_identify_rules_default_to_insert_and_update_and_get_numbered_ids(
    tmp_path: Path,
) -> None:
    rulebook = load(
        tmp_path,
        TABLES + "identify:\n  - table: t\n  - table: t\n    on: delete\n",
    )
    assert [(r.id, sorted(r.on)) for r in rulebook.rules] == [
        ("identify public.t", [Action.INSERT, Action.UPDATE]),
        ("identify public.t #2", [Action.DELETE]),
    ]


def test_rule_may_override_user_id_integrations_and_context(tmp_path: Path) -> None:
    rulebook = load(
        tmp_path,
        TABLES
        + """\
track:
  - event: E
    id: e-rule
    table: t
    on: [insert]
    user_id: owner_id
    integrations:
      All: false
      Mixpanel: true
    context:
      app: {name: shop}
""",
    )
    rule = rulebook.rules[0]
    assert (rule.id, rule.user_id.text) == ("e-rule", "owner_id")
    assert rule.integrations == {"All": False, "Mixpanel": True}
    assert rule.context == {"app": {"name": "shop"}}


def test_a_rule_id_of_zero_is_an_id(tmp_path: Path) -> None:
    rulebook = load(
        tmp_path,
        TABLES + "track:\n  - event: E\n    id: 0\n    table: t\n    on: insert\n",
    )
    assert rulebook.rules[0].id == "0"


# One problem at a time, each at its line

PROBLEMS = [
    pytest.param(
        "version: 1\ntables:\n  t:\n    user_id: [id\n",
        "4: invalid YAML: ",  # where the '[' left open is, not past the end
        id="invalid-yaml",
    ),
    pytest.param(
        TABLES + "    user_id: email\n",
        "5: invalid YAML: duplicate key 'user_id'",
        id="duplicate-key",
    ),
    pytest.param(
        "version: 1\ntabels: {}\ntables:\n  t:\n    user_id: id\n",
        "2: unknown key 'tabels' in the rulebook; did you mean 'tables'?",
        id="unknown-top-key",
    ),
    pytest.param(
        TABLES + "    cursr: updated_at\n",
        "5: unknown key 'cursr' in table 'public.t'; did you mean 'cursor'?",
        id="unknown-table-key",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    trait:\n      a: b\n",
        "7: unknown key 'trait' in identify rule; did you mean 'traits'?",
        id="unknown-rule-key",
    ),
    pytest.param(
        TABLES + "track:\n  - event: E\n    table: t\n    on: insert\n    whne: x\n",
        "9: unknown key 'whne' in track rule; did you mean 'when'?",
        id="unknown-track-key",
    ),
    pytest.param(
        "tables:\n  t:\n    user_id: id\n",
        "1: missing 'version' (this release reads 1)",
        id="missing-version",
    ),
    pytest.param(
        TABLES.replace("version: 1", "version: 2"),
        "1: unsupported rulebook version 2; this release reads 1",
        id="wrong-version",
    ),
    pytest.param(
        TABLES.replace("version: 1", "version: true"),
        "1: unsupported rulebook version True; this release reads 1",
        id="boolean-version",
    ),
    pytest.param(
        "version: 1\ntables:\n  t:\n    user_id: id\n  [oops\n",
        "5: invalid YAML: could not find expected ':'",  # the last line, not after
        id="invalid-yaml-last-line",
    ),
    pytest.param(
        "version: 1\ntables: {}\n",
        "2: 'tables' must map each tracked table to its user_id",
        id="no-tables",
    ),
    pytest.param(
        "version: 1\ntables:\n  t:\n    cursor: x\n",
        "3: table 't' has no 'user_id'",
        id="table-without-user-id",
    ),
    pytest.param(
        TABLES + "track:\n  - table: t\n    on: insert\n",
        "6: a track rule needs 'event': a non-empty name",
        id="track-without-event",
    ),
    pytest.param(
        TABLES + "track:\n  - table: t\n    on: insert\n    event: 123\n",
        "8: 'event' is a name (text), not a number; quote it if that is the name",
        id="track-event-a-number",
    ),
    pytest.param(
        TABLES + "track:\n  - table: t\n    on: insert\n    event: ' '\n",
        "8: 'event' is empty; a track rule needs a name",
        id="track-event-blank",
    ),
    pytest.param(
        TABLES + "track:\n  - event: E\n    table: t\n    on: [insert, insert]\n",
        "8: 'on' lists insert more than once",
        id="on-twice",
    ),
    pytest.param(
        TABLES + "track:\n  - event: E\n    table: t\n",
        "6: a track rule needs 'on': insert, update or delete",
        id="track-without-on",
    ),
    pytest.param(
        TABLES + "track:\n  - event: E\n    table: t\n    on: [insert, upsert]\n",
        "8: 'on' takes insert, update and delete; got upsert",
        id="bad-on-value",
    ),
    pytest.param(
        TABLES + "track:\n  - event: E\n    table: t\n    on: true\n",
        "8: 'on' takes insert, update and delete; got True",
        id="boolean-on-value",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    context:\n      app:\n"
        "        logo: !!binary aGk=\n",
        "8: 'context.app' holds binary data (!!binary), which no call can carry",
        id="binary-in-context",
    ),
    pytest.param(
        TABLES + "track:\n  - event: E\n    table: t\n    on: {insert, update}\n",
        "8: 'on' takes a list, as [insert, update], not a mapping",
        id="on-in-braces",
    ),
    pytest.param(
        TABLES + "track:\n  - event: E\n    table: t\n    on: [[insert]]\n",
        "8: 'on' takes insert, update and delete; got ['insert']",
        id="on-nested",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    traits: {[a, b]: id}\n",
        "7: invalid YAML: a key is a name, not a list or a mapping",
        id="list-as-key",
    ),
    pytest.param(
        TABLES + "track:\n  - event: E\n    table: t\n    on: []\n",
        "8: 'on' takes insert, update and delete; got nothing",
        id="empty-on",
    ),
    pytest.param(
        TABLES + "track:\n  - event: E\n    table: orders\n    on: insert\n",
        "7: table 'orders' is not under 'tables' (tracked: public.t)",
        id="table-not-tracked",
    ),
    pytest.param(
        "version: 1\ntables:\n  t:\n    user_id: \"concat('u', id\"\n"
        "track:\n  - event: E\n    table: t\n    on: insert\n",
        "4: in expression \"concat('u', id\": expected ')'",
        id="rule-on-a-table-with-problems",
    ),
    pytest.param(
        "version: 1\ntables:\n  '\"dot.s\".plain':\n    user_id: id\n",
        "3: table '\"dot.s\".plain': its schema 'dot.s' holds a period",
        id="schema-with-a-period",
    ),
    pytest.param(
        'version: 1\ntables:\n  "bad\\0name":\n    user_id: id\n',
        "3: table 'bad\\x00name' holds a NUL character, which no PostgreSQL name can",
        id="table-name-with-a-nul",
    ),
    pytest.param(
        TABLES + 'track:\n  - event: E\n    table: "t\\0"\n    on: insert\n',
        "7: table 't\\x00' is not under 'tables' (tracked: public.t)",
        id="rule-table-with-a-nul",
    ),
    pytest.param(
        "version: 1\ntables:\n  t:\n    user_id: id\n    lookups:\n"
        '      o:\n        table: "own\\0ers"\n        key: {id: id}\n',
        "7: lookup 'o': table 'own\\x00ers' holds a NUL character, which no "
        "PostgreSQL name can",
        id="lookup-table-with-a-nul",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    traits:\n      a: lower(name\n",
        "8: in expression 'lower(name': expected ')', found end of expression "
        "at column 11",
        id="expression-syntax",
    ),
    pytest.param(
        TABLES + "track:\n  - event: E\n    table: t\n    on: insert\n"
        "    when: status === 'paid'\n",
        "9: in expression \"status === 'paid'\": ",
        id="when-syntax",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    traits:\n      a: frobnicate(x)\n",
        "8: in expression 'frobnicate(x)': unknown function 'frobnicate'",
        id="unknown-function",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    traits:\n      a: !!binary aGk=\n",
        "8: literal b'hi': expected a scalar, got bytes",
        id="binary-literal",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    traits:\n      zip: 017\n",
        "8: invalid YAML: 017 is read by YAML as the number 15; write 15 for the "
        "number, or quote it (\"'017'\") for the text",
        id="yaml-octal",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    traits:\n      at: 1:30\n",
        "8: invalid YAML: 1:30 is read by YAML as the number 90",
        id="yaml-sexagesimal",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    traits:\n      x: !!int 3.5\n",
        "8: invalid YAML: 3.5 is not an integer",
        id="yaml-int-tag-on-a-fraction",
    ),
    pytest.param(
        TABLES
        + "identify:\n  - table: t\n    traits:\n      x: 1e9999999999999999999\n",
        "8: invalid YAML: 1e9999999999999999999 is beyond any decimal number",
        id="yaml-beyond-any-decimal",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    traits:\n      x: .nan\n",
        "8: invalid YAML: .nan is not a finite decimal number",
        id="yaml-nan",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    traits:\n      a: [1, 2]\n",
        "8: expected an expression or a literal, got a collection",
        id="list-as-expression",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    user_id: {a: b}\n",
        "7: expected an expression or a literal, got a collection",
        id="mapping-as-user-id",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    integrations:\n      Amplitude: null\n",
        "7: 'integrations' maps destination names to true or false",
        id="integration-null",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    integrations:\n      All: 'no'\n",
        "7: 'integrations' maps destination names to true or false",
        id="integration-not-bool",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    integrations: null\n",
        "7: 'integrations' maps destination names to true or false",
        id="integrations-null",
    ),
    pytest.param(
        TABLES + "identify:\n  - table: t\n    context:\n      sources:\n"
        "        job_id: x\n",
        "8: 'context.sources' is set by cdc-tracker, not by rules",
        id="context-sources",
    ),
    pytest.param(
        TABLES + "track:\n  - event: E\n    table: t\n    on: insert\n"
        "  - event: E\n    table: t\n    on: update\n",
        "9: rule id 'E' is also used on line 6; give one of them an 'id'",
        id="duplicate-rule-id",
    ),
    pytest.param(
        "timezone: Mars/Olympus_Mons\n" + TABLES,
        "1: unknown time zone 'Mars/Olympus_Mons'",
        id="unknown-timezone",
    ),
    pytest.param(
        "timezone: localtime\n" + TABLES,
        "1: 'localtime' is the host's zone; name the zone itself",
        id="timezone-localtime",
    ),
    pytest.param(
        "timezone:\n" + TABLES,
        "1: 'timezone' is a zone name, such as UTC or Europe/Berlin",
        id="timezone-null",
    ),
    pytest.param(
        "- version: 1\n",
        "1: a rulebook is a mapping with 'version' and 'tables'",
        id="not-a-mapping",
    ),
]


@pytest.mark.parametrize(("text", "expected"), PROBLEMS)
def test_each_problem_is_reported_at_its_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    """One mistake gives exactly one ``file:line: message``."""
    assert only_problem(tmp_path, text).startswith(expected)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Validation goes on past the first problem and reports each one, in order."""
    found = problems(
        tmp_path,
        """\
        version: 3
        timezone: Nowhere/Special
        tables:
          t:
            user_id: id
        identify:
          - table: t
            traits:
              a: lower(
              b: nope(x)
        track:
          - table: t
            on: insert
          - event: Dropped
            table: u
            on: delete
        """,
    )
    assert [line.split(":", 1)[0] for line in found] == [
        "1",
        "2",
        "9",
        "10",
        "12",
        "15",
    ]


def test_missing_file_is_a_rulebook_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(RulebookError) as caught:
        load_rulebook(missing)
    assert str(caught.value).startswith(f"{missing}: cannot read rulebook")


def test_rulebook_error_is_a_config_error_carrying_each_problem(
    tmp_path: Path,
) -> None:
    """The CLI maps ConfigError to exit code 2; problems stay machine-readable."""
    path = write(tmp_path, "tables:\n  t:\n    user_id: id\n")
    with pytest.raises(ConfigError) as caught:
        load_rulebook(path)
    assert isinstance(caught.value, RulebookError)
    assert caught.value.problems == [
        (str(path), 1, "missing 'version' (this release reads 1)")
    ]


TABLE_ONLY = "version: 1\ntables:\n  public.t:\n    user_id: {user_id}\n{extra}"


def test_a_constant_user_id_is_refused(tmp_path: Path) -> None:
    """user_id: 5 would send every call to one user: refused with a hint."""
    found = problems(tmp_path, TABLE_ONLY.format(user_id="5", extra=""))
    assert found == [
        "4: user_id is the constant 5: every call would go to one user; "
        "name a column, e.g. user_id: id"
    ]


def test_a_quoted_version_says_to_write_a_number(tmp_path: Path) -> None:
    text = TABLE_ONLY.format(user_id="id", extra="").replace(
        "version: 1", 'version: "1"'
    )
    assert problems(tmp_path, text) == [
        "1: unsupported rulebook version '1' (write it as a number); this release "
        "reads 1"
    ]


def test_utc_is_accepted_in_any_case(tmp_path: Path) -> None:
    rulebook = load(
        tmp_path, "timezone: utc\n" + TABLE_ONLY.format(user_id="id", extra="")
    )
    assert rulebook.timezone.utcoffset(None) is not None


def test_an_empty_trait_name_is_refused(tmp_path: Path) -> None:
    extra = (
        "identify:\n  - table: public.t\n    traits:\n"
        "      '': email\n      ok: email\n"
    )
    assert problems(tmp_path, TABLE_ONLY.format(user_id="id", extra=extra)) == [
        "8: a trait or property needs a non-empty name"
    ]


def test_insert_ids_takes_key_or_position(tmp_path: Path) -> None:
    text = TABLE_ONLY.format(user_id="id", extra="    insert_ids: position\n")
    assert load(tmp_path, text).tables["public.t"].insert_ids == "position"
    bad = TABLE_ONLY.format(user_id="id", extra="    insert_ids: row\n")
    assert problems(tmp_path, bad) == ["5: 'insert_ids' is key or position, not 'row'"]


def test_a_number_literal_keeps_the_digits_it_was_written_with(tmp_path: Path) -> None:
    """A YAML float would drop 4.10's zero and round 0.1 + 0.2; a literal is exact."""
    rulebook = load(
        tmp_path,
        TABLES + "identify:\n  - table: t\n    traits:\n"
        "      price: 4.10\n      big: 1e400\n      small: -0.000000000000000001\n"
        "      unsigned: 2.9e3\n      grouped: 1_000e3\n",
    )
    [rule] = rulebook.rules
    constants = {name: item.constant for name, item in rule.fields.items()}
    assert constants == {
        "price": Decimal("4.10"),
        "big": Decimal("1e400"),
        "small": Decimal("-0.000000000000000001"),
        "unsigned": Decimal("2.9e3"),
        "grouped": Decimal("1000e3"),
    }
    assert str(constants["price"]) == "4.10"


@pytest.mark.parametrize(
    ("written", "name"),
    [
        ("merchants", "public.merchants"),
        ("sales.orders", "sales.orders"),
        ('public."Weird Name"', "public.Weird Name"),
        ('"Weird Name"', "public.Weird Name"),
        ('"Sales"."Q""4"', 'Sales.Q"4'),
        ("public.Weird Name", "public.Weird Name"),
        ('public."unclosed', 'public."unclosed'),
        ('"a.b"', "public.a.b"),
        ('public."a.b"', "public.a.b"),
    ],
)
def test_a_table_may_be_named_as_sql_quotes_it(written: str, name: str) -> None:
    """Fixes print names quoted as SQL wants them; the rulebook takes them so."""
    assert qualify(written) == name


def test_a_quoted_table_name_is_the_same_table(tmp_path: Path) -> None:
    rulebook = load(
        tmp_path,
        'version: 1\ntables:\n  public."Weird Name":\n    user_id: id\n'
        "track:\n  - event: E\n    table: '\"Weird Name\"'\n    on: insert\n",
    )
    assert list(rulebook.tables) == ["public.Weird Name"]
    assert [rule.table for rule in rulebook.rules] == ["public.Weird Name"]


def test_a_literal_past_any_numeric_loads_without_writing_out_its_zeros(
    tmp_path: Path,
) -> None:
    rulebook = load(
        tmp_path,
        TABLES + "identify:\n  - table: t\n    traits:\n      v: 1e99999999999\n",
    )
    [rule] = rulebook.rules
    assert rule.fields["v"].text == "1E+99999999999"


# The digest of the file the rules were read from


def test_digest_is_of_the_bytes_the_rules_were_read_from(tmp_path: Path) -> None:
    path = write(tmp_path, TABLES)
    first = load_rulebook(path)
    assert first.digest == blake2b(path.read_bytes(), digest_size=12).hexdigest()
    assert load_rulebook(path).digest == first.digest
    path.write_text(TABLES + "# edited\n")
    assert load_rulebook(path).digest not in ("", first.digest)
    # Loaded before the edit, it still describes the rules it holds.
    assert first.digest == blake2b(TABLES.encode(), digest_size=12).hexdigest()


def test_replay_plan_keeps_the_digest_of_the_whole_file() -> None:
    example = load_rulebook(EXAMPLES / "rulebook.yaml")
    plan = make_plan(example, tables=(), rules=(example.rules[0].id,))
    assert len(plan.rulebook.rules) == 1
    assert plan.rulebook.digest == example.digest != ""


def test_windows_line_ends_count_lines_as_unix_ones(tmp_path: Path) -> None:
    path = tmp_path / "rulebook.yaml"
    path.write_bytes(b"version: 1\r\ntables:\r\n  t:\r\n    user_id: id\r\n  [oops\r\n")
    with pytest.raises(RulebookError) as caught:
        load_rulebook(path)
    assert str(caught.value) == (f"{path}:5: invalid YAML: could not find expected ':'")
