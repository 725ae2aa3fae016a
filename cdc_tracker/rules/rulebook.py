"""The rulebook: a versioned YAML tracking plan, validated whole on load.

``load_rulebook`` returns a ``Rulebook`` or raises ``RulebookError`` listing every
problem with its file and line. Checks that need the live schema (tables,
columns, types, replica identity) are in ``cdc_tracker.rules.schema``. Lookups
(related rows read by key) are declared as in ``cdc_tracker.rules.lookup_spec``.
"""

from __future__ import annotations

import difflib
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from hashlib import blake2b
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cdc_tracker.errors import RulebookError
from cdc_tracker.model import Action
from cdc_tracker.rules.expr import (
    Expression,
    ExpressionError,
    literal,
    parse_expression,
)
from cdc_tracker.rules.lookup_spec import LookupSpec, read_lookups, unknown_references
from cdc_tracker.rules.names import dotted_schema, qualify
from cdc_tracker.rules.plan import Fields, Rule, Rulebook, TableSpec
from cdc_tracker.rules.yamlfile import LineDict, LineList, YamlProblem, parse_yaml

_TOP_KEYS = {"version", "timezone", "tables", "identify", "track"}
_TABLE_KEYS = {"user_id", "cursor", "description", "lookups", "insert_ids"}
_RULE_KEYS = {
    "id", "table", "on", "when", "user_id", "integrations", "context", "description",
    "lookups",
}  # fmt: skip
_IDENTIFY_KEYS = _RULE_KEYS | {"traits"}
_TRACK_KEYS = _RULE_KEYS | {"event", "properties"}
_ACTIONS = {action.value: action for action in Action}

# The plan's types are part of this module's interface too.
__all__ = [
    "Fields",
    "Rule",
    "Rulebook",
    "TableSpec",
    "load_rulebook",
    "qualify",
]


def load_rulebook(path: str | Path) -> Rulebook:
    """Read and validate a rulebook file; raise ``RulebookError`` with every problem."""
    builder = _Builder(Path(path))
    rulebook = builder.build()
    if builder.problems:
        raise RulebookError(builder.problems)
    assert rulebook is not None
    return rulebook


class _Builder:
    """Walks the YAML document once, collecting problems instead of stopping early."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[tuple[str, int | None, str]] = []
        # Every table under 'tables', those with problems too: a rule on one of
        # those is not told its table is missing, only the table's problems are.
        self.declared: set[str] = set()

    def problem(self, line: int | None, message: str) -> None:
        self.problems.append((str(self.path), line, message))

    def build(self) -> Rulebook | None:
        try:
            data = self.path.read_bytes()
            document = parse_yaml(data)
        except OSError as exc:
            self.problem(None, f"cannot read rulebook: {exc.strerror or exc}")
            return None
        except YamlProblem as exc:
            self.problem(exc.line, f"invalid YAML: {exc.problem}")
            return None
        if not isinstance(document, LineDict):
            self.problem(1, "a rulebook is a mapping with 'version' and 'tables'")
            return None
        self.unknown_keys(document, _TOP_KEYS, "the rulebook")
        version = self.version(document)
        zone = self.timezone(document)
        tables = self.tables(document)
        rules = [
            *self.rules(document, "identify", tables),
            *self.rules(document, "track", tables),
        ]
        self.unique_ids(rules)
        digest = blake2b(data, digest_size=12).hexdigest()
        return Rulebook(self.path, version, zone, tables, rules, digest)

    def unknown_keys(self, mapping: LineDict, known: set[str], where: str) -> None:
        for key in mapping:
            if key not in known:
                hint = _closest(str(key), known)
                self.problem(
                    mapping.lines[key], f"unknown key '{key}' in {where}{hint}"
                )

    def version(self, document: LineDict) -> int:
        version = document.get("version")
        if version is None:
            self.problem(document.line, "missing 'version' (this release reads 1)")
        elif version != 1 or isinstance(version, bool):  # True == 1 in Python
            quoted = " (write it as a number)" if version == "1" else ""
            self.problem(
                document.lines["version"],
                f"unsupported rulebook version {version!r}{quoted}; this release "
                "reads 1",
            )
        return 1

    def timezone(self, document: LineDict) -> tzinfo:
        name = document.get("timezone", "UTC")
        line = document.lines.get("timezone")
        if not isinstance(name, str):
            self.problem(
                line, "'timezone' is a zone name, such as UTC or Europe/Berlin"
            )
            return UTC
        if name.lower() == "localtime":
            # The host's own zone: the same rulebook would read times differently
            # on another machine.
            self.problem(line, f"'{name}' is the host's zone; name the zone itself")
            return UTC
        try:
            zone = UTC if name.upper() == "UTC" else ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.problem(line, f"unknown time zone '{name}'")
            return UTC
        # A zone always at UTC (Etc/UTC, GMT, Zulu) reads as UTC: same values,
        # same messageIds.
        return UTC if _always_utc(zone) else zone

    def tables(self, document: LineDict) -> dict[str, TableSpec]:
        section = document.get("tables")
        if not isinstance(section, LineDict) or not section:
            self.problem(
                document.lines.get("tables", document.line),
                "'tables' must map each tracked table to its user_id",
            )
            return {}
        self.declared = {qualify(str(name)) for name in section}
        return {
            spec.name: spec
            for name, body in section.items()
            if (spec := self.table(str(name), body, section.lines[name]))
        }

    def table(self, name: str, body: Any, line: int) -> TableSpec | None:
        if not isinstance(body, LineDict):
            self.problem(line, f"table '{name}' needs a mapping with 'user_id'")
            return None
        self.unknown_keys(body, _TABLE_KEYS, f"table '{name}'")
        if "\x00" in name:
            self.problem(
                line,
                f"table {name!r} holds a NUL character, which no PostgreSQL name can",
            )
            return None
        schema = dotted_schema(name)
        if schema is not None:
            self.problem(
                line,
                f"table '{name}': its schema '{schema}' holds a period, which no "
                "tracked schema may (tables are named schema.table, by wal2json "
                "too); rename the schema",
            )
            return None
        if "user_id" not in body:
            self.problem(line, f"table '{name}' has no 'user_id'")
            return None
        user_id = self.expression(body["user_id"], body.lines["user_id"])
        cursor = body.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            self.problem(body.lines["cursor"], "'cursor' must be a column name")
            cursor = None
        lookups = read_lookups(body, self.problem, self.unknown_keys)
        insert_ids = body.get("insert_ids", "key")
        if insert_ids not in ("key", "position"):
            self.problem(
                body.lines["insert_ids"],
                f"'insert_ids' is key or position, not {insert_ids!r}",
            )
            insert_ids = "key"
        if user_id is None:
            return None
        self.not_constant(user_id, body.lines["user_id"])
        for message in unknown_references("user_id", user_id, lookups):
            self.problem(body.lines["user_id"], message)
        return TableSpec(
            qualify(name),
            user_id,
            cursor,
            line,
            lookups,
            insert_ids,
            user_id_line=body.lines["user_id"],
            cursor_line=body.lines.get("cursor"),
        )

    def not_constant(self, user_id: Expression, line: int) -> None:
        if user_id.is_literal:
            self.problem(
                line,
                f"user_id is the constant {user_id.text}: every call would go to one "
                "user; name a column, e.g. user_id: id",
            )

    def rules(
        self,
        document: LineDict,
        kind: Literal["identify", "track"],
        tables: dict[str, TableSpec],
    ) -> list[Rule]:
        section = document.get(kind)
        if section is None:  # absent or left empty: no rules of this kind
            return []
        if not isinstance(section, LineList):
            self.problem(document.lines.get(kind), f"'{kind}' must be a list of rules")
            return []
        rules = []
        for index, body in enumerate(section):
            line = section.lines[index]
            if not isinstance(body, LineDict):
                self.problem(line, f"each {kind} rule must be a mapping")
                continue
            rule = self.rule(kind, body, tables)
            if rule is not None:
                rules.append(rule)
        return _name_identify_rules(rules)

    def rule(
        self,
        kind: Literal["identify", "track"],
        body: LineDict,
        tables: dict[str, TableSpec],
    ) -> Rule | None:
        known = _IDENTIFY_KEYS if kind == "identify" else _TRACK_KEYS
        self.unknown_keys(body, known, f"{kind} rule")
        event = self.event(body) if kind == "track" else None
        table = self.rule_table(body, tables)
        actions = self.actions(body, kind)
        when = self.optional_expression(body, "when")
        user_id = self.optional_expression(body, "user_id")
        if user_id is not None:
            self.not_constant(user_id, body.lines["user_id"])
        fields_key = "traits" if kind == "identify" else "properties"
        fields = self.fields(
            body.get(fields_key), body.lines.get(fields_key, body.line)
        )
        integrations = self.integrations(body)
        context = self.context(body)
        lookups = self.rule_lookups(body, table)
        if table is None or actions is None or (kind == "track" and event is None):
            return None
        rule_id = body.get("id")
        rule = Rule(
            kind=kind,
            id=str(rule_id) if rule_id not in (None, "") else (event or ""),
            table=table.name,
            on=actions,
            when=when,
            user_id=user_id or table.user_id,
            fields=fields,
            event=event,
            integrations=integrations,
            context=context,
            description=_text(body.get("description")),
            line=body.line,
            lines=dict(body.lines) | _leaf_lines(body.get(fields_key), fields_key),
            lookups=lookups,
        )
        self.lookup_references(rule, table)
        return rule

    def rule_lookups(
        self, body: LineDict, table: TableSpec | None
    ) -> dict[str, LookupSpec]:
        inherited = table.lookups if table is not None else {}
        own = read_lookups(body, self.problem, self.unknown_keys)
        for name in own.keys() & inherited.keys():
            self.problem(
                own[name].line,
                f"lookup '{name}' is already declared on its table; "
                "give this one another name",
            )
        return inherited | own

    def lookup_references(self, rule: Rule, table: TableSpec) -> None:
        for key, expr in rule.expressions():
            if expr is table.user_id:  # checked with its table
                continue
            line = rule.lines.get(key, rule.lines.get(key.split(".")[0], rule.line))
            for message in unknown_references(key, expr, rule.lookups):
                self.problem(line, message)

    def event(self, body: LineDict) -> str | None:
        event = body.get("event")
        if event is None:
            self.problem(body.line, "a track rule needs 'event': a non-empty name")
            return None
        line = body.lines.get("event", body.line)
        if not isinstance(event, str):
            self.problem(
                line,
                f"'event' is a name (text), not {_kind_of_yaml(event)}; quote it "
                "if that is the name",
            )
            return None
        if not event.strip():
            self.problem(line, "'event' is empty; a track rule needs a name")
            return None
        return event

    def rule_table(
        self, body: LineDict, tables: dict[str, TableSpec]
    ) -> TableSpec | None:
        name = body.get("table")
        if not isinstance(name, str):
            self.problem(body.line, "a rule needs 'table': one of the tracked tables")
            return None
        spec = tables.get(qualify(name))
        if spec is None and qualify(name) in self.declared:
            return None  # the table's own problems are reported at its lines
        if spec is None:
            known = ", ".join(sorted(tables)) or "none"
            shown = repr(name) if "\x00" in name else f"'{name}'"  # not a raw NUL
            self.problem(
                body.lines["table"],
                f"table {shown} is not under 'tables' (tracked: {known})",
            )
        return spec

    def actions(self, body: LineDict, kind: str) -> frozenset[Action] | None:
        raw = body.get("on")
        if raw is None:
            if kind == "identify":
                return frozenset({Action.INSERT, Action.UPDATE})
            self.problem(body.line, "a track rule needs 'on': insert, update or delete")
            return None
        line = body.lines["on"]
        if isinstance(raw, dict):  # on: {insert, update}, braces for brackets
            self.problem(line, "'on' takes a list, as [insert, update], not a mapping")
            return None
        names = raw if isinstance(raw, list) else [raw]
        bad = [
            name for name in names if not isinstance(name, str) or name not in _ACTIONS
        ]
        if bad or not names:
            self.problem(
                line,
                "'on' takes insert, update and delete; got "
                + (", ".join(map(str, bad)) or "nothing"),
            )
            return None
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            self.problem(line, f"'on' lists {', '.join(twice)} more than once")
            return None
        return frozenset(_ACTIONS[name] for name in names)

    def optional_expression(self, body: LineDict, key: str) -> Expression | None:
        if key not in body:
            return None
        return self.expression(body[key], body.lines[key])

    def expression(self, value: Any, line: int) -> Expression | None:
        if isinstance(value, (LineDict, LineList)):
            self.problem(line, "expected an expression or a literal, got a collection")
            return None
        try:
            if not isinstance(value, str):
                return literal(value)
            return parse_expression(value)
        except ExpressionError as exc:
            if not isinstance(value, str):  # a literal: no column to point at
                self.problem(line, f"literal {value!r}: {exc.message}")
                return None
            self.problem(line, f"in expression {value!r}: {exc}")
            return None

    def fields(self, value: Any, line: int) -> Fields:
        if value is None:
            return {}
        if not isinstance(value, LineDict):
            self.problem(
                line, "traits and properties are a mapping of name: expression"
            )
            return {}
        fields: Fields = {}
        for name, item in value.items():
            item_line = value.lines[name]
            if not str(name).strip():
                self.problem(item_line, "a trait or property needs a non-empty name")
                continue
            if isinstance(item, LineDict):
                fields[str(name)] = self.fields(item, item_line)
            elif (expr := self.expression(item, item_line)) is not None:
                fields[str(name)] = expr
        return fields

    def integrations(self, body: LineDict) -> dict[str, bool] | None:
        if "integrations" not in body:
            return None
        value = body["integrations"]
        if not isinstance(value, LineDict) or not all(
            isinstance(flag, bool) for flag in value.values()
        ):
            # RudderStack routes a call with a null (or non-boolean) entry nowhere.
            self.problem(
                body.lines["integrations"],
                "'integrations' maps destination names to true or false",
            )
            return None
        return {str(name): flag for name, flag in value.items()}

    def context(self, body: LineDict) -> dict[str, Any] | None:
        value = body.get("context")
        if value is None:
            return None
        if not isinstance(value, LineDict):
            self.problem(body.lines["context"], "'context' must be a mapping")
            return None
        for reserved in ("sources", "library", "traits"):
            if reserved in value:
                self.problem(
                    value.lines[reserved],
                    f"'context.{reserved}' is set by cdc-tracker, not by rules",
                )
        for key, item in value.items():
            kind = _unsendable(item)
            if kind is not None:
                self.problem(
                    value.lines[key],
                    f"'context.{key}' holds {kind}, which no call can carry: "
                    "give text, numbers, booleans, lists and mappings",
                )
        return {str(key): _plain(item) for key, item in value.items()}

    def unique_ids(self, rules: list[Rule]) -> None:
        seen: dict[str, Rule] = {}
        for rule in rules:
            if rule.id in seen:
                self.problem(
                    rule.line,
                    f"rule id '{rule.id}' is also used on line {seen[rule.id].line}; "
                    "give one of them an 'id'",
                )
            seen[rule.id] = rule


def _name_identify_rules(rules: list[Rule]) -> list[Rule]:
    counts: dict[str, int] = {}
    for rule in rules:
        if rule.kind == "identify" and not rule.id:
            counts[rule.table] = counts.get(rule.table, 0) + 1
            number = counts[rule.table]
            rule.id = f"identify {rule.table}" + (f" #{number}" if number > 1 else "")
    return rules


def _leaf_lines(value: Any, prefix: str) -> dict[str, int]:
    if not isinstance(value, LineDict):
        return {}
    lines: dict[str, int] = {}
    for name, item in value.items():
        key = f"{prefix}.{name}"
        lines[key] = value.lines[name]
        lines |= _leaf_lines(item, key)
    return lines


def _unsendable(value: Any) -> str | None:
    """What in a YAML value JSON cannot carry (binary, a set), or None."""
    if isinstance(value, dict):
        found = (_unsendable(item) for item in value.values())
    elif isinstance(value, list):
        found = (_unsendable(item) for item in value)
    elif isinstance(value, bytes):
        return "binary data (!!binary)"
    elif isinstance(value, (set, frozenset)):
        return "a set (!!set)"
    else:
        return None
    return next((kind for kind in found if kind is not None), None)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _closest(word: str, known: set[str]) -> str:
    match = difflib.get_close_matches(word, sorted(known), n=1)
    return (
        f"; did you mean '{match[0]}'?"
        if match
        else f"; expected one of {', '.join(sorted(known))}"
    )


def _kind_of_yaml(value: Any) -> str:
    """What YAML made of a value that was meant as text."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | Decimal):
        return "a number"
    if isinstance(value, datetime | date):
        return "a date"
    if isinstance(value, list):
        return "a list"
    return "a mapping" if isinstance(value, dict) else type(value).__name__


def _always_utc(zone: tzinfo) -> bool:
    return str(zone) in _UTC_NAMES


# The tz database's names of UTC itself (not of places that keep it today, such
# as Africa/Abidjan, whose past offsets differ).
_UTC_NAMES = frozenset(
    prefix + name
    for prefix in ("", "Etc/")
    for name in (
        "UTC", "UCT", "Zulu", "Universal", "GMT", "GMT0", "GMT+0", "GMT-0", "Greenwich",
    )
)  # fmt: skip
