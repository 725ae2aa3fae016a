"""``cdc-tracker schema``: a JSON Schema that agrees with what the loader accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from cdc_tracker.cli import main
from cdc_tracker.errors import RulebookError
from cdc_tracker.rules import lookup_spec, rulebook
from cdc_tracker.rules.json_schema import rulebook_schema
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.rules.yamlfile import load_yaml
from tests.harness import EXAMPLES

ROOT = Path(__file__).resolve().parent.parent

BASE = """\
version: 1
tables:
  merchants: {user_id: id}
"""
TRACK = BASE + "track:\n  - {event: E, table: merchants, on: insert}\n"

# Rulebooks both the loader and the schema accept.
GOOD = {
    "a track rule": TRACK,
    "identify with default on, nested and null traits": BASE
    + "identify:\n  - table: merchants\n    traits: {a: {b: plan}, c: null, d: 2}\n",
    "on as a list, literal when": BASE
    + "track:\n  - {event: E, table: merchants, on: [insert, delete], when: true}\n",
    "empty rule sections": BASE + "identify:\ntrack:\n",
    "version written 1.0": TRACK.replace("version: 1", "version: 1.0"),
    "null cursor, description and time zone": TRACK.replace(
        "{user_id: id}", "{user_id: id, cursor: null, description: shops}"
    )
    + "timezone: Europe/Paris\n",
    "integrations, context and an id": BASE
    + "track:\n  - {event: E, id: e1, table: merchants, on: update,"
    " integrations: {All: false}, context: {app: {name: x}}}\n",
    "lookups on a table and a rule": BASE.replace(
        "{user_id: id}",
        "{user_id: id, lookups: {owner: {table: users, key: {id: owner_id}}}}",
    )
    + "track:\n  - event: E\n    table: merchants\n    on: insert\n"
    "    lookups:\n      plan: {table: plans, key: {id: plan_id}, missing: skip}\n"
    "    properties: {o: owner.email, p: plan.name}\n",
}

# Rulebooks both refuse: the shapes the schema exists to catch as they are typed.
BAD = {
    "a list, not a mapping": "- version: 1\n",
    "no version": "tables:\n  merchants: {user_id: id}\n",
    "version 2": TRACK.replace("version: 1", "version: 2"),
    "version true": TRACK.replace("version: 1", "version: true"),
    "no tables": "version: 1\ntables: {}\n",
    "a table without user_id": "version: 1\ntables:\n  merchants: {cursor: id}\n",
    "a user_id that is a list": "version: 1\ntables:\n  merchants: {user_id: [id]}\n",
    "a misspelt top-level key": TRACK + "trak: []\n",
    "a misspelt rule key": TRACK.replace("on: insert", "on: insert, propertes: {}"),
    "a track rule without event": BASE + "track:\n  - {table: merchants, on: insert}\n",
    "a track rule without on": BASE + "track:\n  - {event: E, table: merchants}\n",
    "an empty on": TRACK.replace("on: insert", "on: []"),
    "an unknown action": TRACK.replace("on: insert", "on: upsert"),
    "track not a list": BASE + "track: {event: E}\n",
    "an identify rule with an event": BASE
    + "identify:\n  - {table: merchants, event: E}\n",
    "a null integration": TRACK.replace(
        "on: insert", "on: insert, integrations: {A: null}"
    ),
    "a reserved context key": TRACK.replace(
        "on: insert", "on: insert, context: {library: {name: x}}"
    ),
    "properties as a list": TRACK.replace("on: insert", "on: insert, properties: [a]"),
    "a property that is a list": TRACK.replace(
        "on: insert", "on: insert, properties: {a: [b]}"
    ),
    "a lookup named old": BASE.replace(
        "{user_id: id}", "{user_id: id, lookups: {Old: {table: t, key: {id: x}}}}"
    ),
    "a lookup without key": BASE.replace(
        "{user_id: id}", "{user_id: id, lookups: {owner: {table: t}}}"
    ),
    "a lookup with an empty key column": BASE.replace(
        "{user_id: id}", "{user_id: id, lookups: {o: {table: t, key: {id: ''}}}}"
    ),
    "a lookup with an unknown policy": BASE.replace(
        "{user_id: id}",
        "{user_id: id, lookups: {o: {table: t, key: {id: x}, missing: maybe}}}",
    ),
}

# What only `cdc-tracker check` can tell: the schema accepts these, the loader not.
BEYOND_SCHEMA = {
    "a rule on an untracked table": BASE
    + "track:\n  - {event: E, table: payouts, on: insert}\n",
    "an expression that does not parse": TRACK.replace(
        "on: insert", "on: insert, when: 'a =='"
    ),
    "two rules with one id": TRACK + "  - {event: E, table: merchants, on: update}\n",
    "an unknown time zone": TRACK + "timezone: Mars/Olympus\n",
    "a lookup nobody declared": TRACK.replace(
        "on: insert", "on: insert, properties: {a: owner.email}"
    ),
}


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = rulebook_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _document(path: Path) -> Any:
    # The project's YAML reader: under YAML 1.1 the key `on` would read as True.
    return load_yaml(path)


def _loads(path: Path) -> bool:
    try:
        load_rulebook(path)
    except RulebookError:
        return False
    return True


def _verdicts(text: str, tmp_path: Path, validator: Draft202012Validator) -> Any:
    path = tmp_path / "rulebook.yaml"
    path.write_text(text)
    return _loads(path), validator.is_valid(_document(path))


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    """The meta-schema accepts it, and it names its dialect."""
    schema = rulebook_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(
    "path", [EXAMPLES / "rulebook.yaml", ROOT / "config" / "rulebook.yaml"]
)
def test_schema_accepts_the_shipped_rulebooks(
    path: Path, validator: Draft202012Validator
) -> None:
    """The example rulebook, and the one the container ships, are valid."""
    assert _loads(path)
    assert list(validator.iter_errors(_document(path))) == []


def _readme_rulebooks() -> list[str]:
    """The yaml blocks under "The rulebook" in README.md, fragments made whole."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The rulebook", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    return [b if b.startswith("version:") else "version: 1\n" + b for b in blocks]


def test_schema_accepts_the_readme_rulebooks(
    validator: Draft202012Validator, tmp_path: Path
) -> None:
    """The rulebooks shown under "The rulebook" in README.md are valid for both."""
    blocks = _readme_rulebooks()
    assert len(blocks) >= 2, "README lost its rulebook examples"
    for text in blocks:
        assert _verdicts(text, tmp_path, validator) == (True, True), text


@pytest.mark.parametrize("text", GOOD.values(), ids=GOOD.keys())
def test_schema_and_loader_both_accept(
    text: str, tmp_path: Path, validator: Draft202012Validator
) -> None:
    assert _verdicts(text, tmp_path, validator) == (True, True)


@pytest.mark.parametrize("text", BAD.values(), ids=BAD.keys())
def test_schema_and_loader_both_reject(
    text: str, tmp_path: Path, validator: Draft202012Validator
) -> None:
    assert _verdicts(text, tmp_path, validator) == (False, False)


@pytest.mark.parametrize("text", BEYOND_SCHEMA.values(), ids=BEYOND_SCHEMA.keys())
def test_what_only_check_can_tell_passes_the_schema(
    text: str, tmp_path: Path, validator: Draft202012Validator
) -> None:
    """These need the expression parser or cross-references: the loader's job."""
    assert _verdicts(text, tmp_path, validator) == (False, True)


def test_schema_names_exactly_the_keys_the_loader_knows() -> None:
    """A key added to the loader without the schema (or the reverse) fails here."""
    schema = rulebook_schema()
    defs = schema["$defs"]
    assert set(schema["properties"]) == rulebook._TOP_KEYS
    assert set(defs["table"]["properties"]) == rulebook._TABLE_KEYS
    assert set(defs["identifyRule"]["properties"]) == rulebook._IDENTIFY_KEYS
    assert set(defs["trackRule"]["properties"]) == rulebook._TRACK_KEYS
    assert set(defs["lookup"]["properties"]) == lookup_spec.LOOKUP_KEYS


def test_schema_command_prints_the_schema_as_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Stdout by default, or the file given with -o; the same JSON either way."""
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == rulebook_schema()
    out = tmp_path / "rulebook.schema.json"
    assert main(["schema", "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == rulebook_schema()
