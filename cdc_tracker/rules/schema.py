"""Check a rulebook against the live schema: tables, columns, types, identity.

Run at daemon start-up and by ``cdc-tracker check --dsn``. Each problem names the
rulebook file and line, and, where one exists, the statement that fixes it. The
catalog must describe ``rulebook.schema_tables``: the tracked tables and the tables
lookups read.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from cdc_tracker.errors import RulebookError
from cdc_tracker.mapping.values import kind_of, orders_as_text
from cdc_tracker.model import Action, TableInfo
from cdc_tracker.rules.expr import Expression, ExpressionError, Kind
from cdc_tracker.rules.lookup_spec import LookupSpec
from cdc_tracker.rules.rulebook import Rule, Rulebook

Problem = tuple[str, int | None, str]


def require_fit(
    rulebook: Rulebook, catalog: dict[str, TableInfo], more: Sequence[Problem] = ()
) -> None:
    """Raise ``RulebookError`` with every problem ``check_schema`` finds, then
    those found elsewhere (``more``: lookups the role may not read)."""
    problems = check_schema(rulebook, catalog) + list(more)
    if problems:
        raise RulebookError(problems)


def check_schema(
    rulebook: Rulebook, catalog: dict[str, TableInfo], *, missing_tables: bool = True
) -> list[Problem]:
    """Every way the rulebook does not fit the database; empty when it fits.

    With ``missing_tables`` False, a tracked table the catalog lacks is left for
    the caller to report (the running daemon counts those apart).
    """
    path = str(rulebook.path)
    problems: list[Problem] = []
    for spec in rulebook.tables.values():
        info = catalog.get(spec.name)
        if info is None:
            if missing_tables:
                message = f"table '{spec.name}' does not exist"
                problems.append((path, spec.line, message))
            continue
        for lookup in spec.lookups.values():
            problems += _lookup_problems(path, lookup, info, catalog)
        lookups = _Lookups(spec.lookups, catalog)
        line = spec.user_id_line or spec.line
        problems += _typed(path, line, "user_id", spec.user_id, info, lookups=lookups)
        if spec.cursor is not None and spec.cursor not in info.columns:
            problems.append(
                (
                    path,
                    spec.cursor_line or spec.line,
                    f"cursor column '{spec.cursor}' is not in {spec.name}",
                )
            )
    for rule in rulebook.rules:
        info = catalog.get(rule.table)
        if info is None:
            continue
        inherited = rulebook.tables[rule.table].lookups
        for name, lookup in rule.lookups.items():
            if inherited.get(name) is not lookup:  # the table's are checked above
                problems += _lookup_problems(path, lookup, info, catalog)
        table_user_id = rulebook.tables[rule.table].user_id
        lookups = _Lookups(rule.lookups, catalog)
        problems += _rule_problems(path, rule, info, lookups, table_user_id)
    return problems


class _Lookups:
    """The kinds of lookup columns, for the type check; unknown tables read as ANY."""

    def __init__(
        self, lookups: dict[str, LookupSpec], catalog: dict[str, TableInfo]
    ) -> None:
        self.tables = {name: catalog.get(spec.table) for name, spec in lookups.items()}

    def kind(self, lookup: str, column: str) -> Kind | None:
        info = self.tables.get(lookup)
        if info is None:  # reported once, with the lookup's declaration
            return Kind.ANY
        declared = info.columns.get(column)
        return None if declared is None else kind_of(declared)

    def text_ordered(self, lookup: str, column: str) -> bool:
        """Whether the column orders as its text (see ``orders_as_text``)."""
        info = self.tables.get(lookup)
        declared = None if info is None else info.columns.get(column)
        return declared is None or orders_as_text(declared)

    def unknown_columns(self, key: str, expr: Expression) -> list[str]:
        messages = []
        for ref in sorted(expr.lookups, key=lambda ref: (ref.lookup, ref.column)):
            info = self.tables.get(ref.lookup)
            if info is not None and ref.column not in info.columns:
                messages.append(
                    f"{key}: column '{ref.column}' of lookup '{ref.lookup}' is not "
                    f"in {info.name}{_did_you_mean(ref.column, info)}"
                )
        return messages


def _lookup_problems(
    path: str, spec: LookupSpec, info: TableInfo, catalog: dict[str, TableInfo]
) -> list[Problem]:
    """The lookup's table and key columns exist, and each key pair can match."""
    where = f"lookup '{spec.name}'"
    related = catalog.get(spec.table)
    if related is None:
        return [(path, spec.line, f"{where}: table '{spec.table}' does not exist")]
    messages = []
    for related_column, own_column in spec.key:
        related_type = related.columns.get(related_column)
        own_type = info.columns.get(own_column)
        if related_type is None:
            messages.append(
                f"{where}: key column '{related_column}' is not in {related.name}"
                + _did_you_mean(related_column, related)
            )
        if own_type is None:
            messages.append(
                f"{where}: key column '{own_column}' is not in {info.name}"
                + _did_you_mean(own_column, info)
            )
        elif related_type is not None and not _can_match(related_type, own_type):
            messages.append(
                f"{where}: key {related.name}.{related_column} ({related_type}) "
                f"cannot match {info.name}.{own_column} ({own_type})"
            )
    return [(path, spec.line, message) for message in messages]


def _can_match(left: str, right: str) -> bool:
    kinds = {kind_of(left), kind_of(right)}
    return len(kinds) == 1 and not kinds & {Kind.JSON, Kind.ARRAY}


def _did_you_mean(column: str, info: TableInfo) -> str:
    close = difflib.get_close_matches(column, list(info.columns), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _rule_problems(
    path: str,
    rule: Rule,
    info: TableInfo,
    lookups: _Lookups,
    table_user_id: Expression,
) -> list[Problem]:
    problems: list[Problem] = []
    for key, expr in rule.expressions():
        if expr is table_user_id:
            continue  # the table's own, checked (and told) at its line
        line = rule.lines.get(key, rule.lines.get(key.split(".")[0], rule.line))
        problems += _typed(path, line, key, expr, info, lookups=lookups)
    # An insert has no old row to read (old.x is null there): only updates and
    # deletes need one.
    if rule.needs_old and rule.on - {Action.INSERT} and not info.full_identity:
        problems.append((path, rule.line, _needs_full(rule, info, "reads old values")))
    if info.full_identity:
        return problems
    if rule.on - {Action.INSERT} and not info.decodes_updates:
        problems.append((path, rule.line, _no_old_key(info)))
    elif Action.DELETE in rule.on and (beyond := _beyond(rule, info.old_key)):
        reason = f"reads {', '.join(beyond)} of deleted rows"
        fix = full_fix(info.lacking(beyond))
        problems.append((path, rule.line, _needs_full(rule, info, reason, fix)))
    return problems


def _no_old_key(info: TableInfo) -> str:
    lacking = info.lacking(())
    if info.leaf_keys:
        why = f"has partitions without an old key ({', '.join(lacking)})"
    else:
        why = {
            "default": "has no primary key and REPLICA IDENTITY DEFAULT",
            "index": "has REPLICA IDENTITY USING INDEX, and that index was dropped",
        }.get(info.replica_identity, "has REPLICA IDENTITY NOTHING")
    return (
        f"table {info.name} {why}: PostgreSQL does not decode its updates and "
        f"deletes; fix: {full_fix(lacking)}"
    )


_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")


def sql_name(table: str) -> str:
    """``schema.name`` as SQL: a part that is not plain lower case is quoted."""
    return ".".join(
        part if _PLAIN.fullmatch(part) else '"' + part.replace('"', '""') + '"'
        for part in table.split(".", 1)
    )


def full_fix(tables: list[str]) -> str:
    """The statements giving ``tables`` (``schema.name``) REPLICA IDENTITY FULL."""
    return " ".join(
        f"ALTER TABLE {sql_name(table)} REPLICA IDENTITY FULL;" for table in tables
    )


def _typed(
    path: str,
    line: int | None,
    key: str,
    expr: Expression,
    info: TableInfo,
    *,
    lookups: _Lookups,
) -> list[Problem]:
    def column_kind(column: str) -> Kind | None:
        declared = info.columns.get(column)
        return None if declared is None else kind_of(declared)

    def text_ordered(column: str, lookup: str | None) -> bool:
        if lookup is not None:
            return lookups.text_ordered(lookup, column)
        return orders_as_text(info.columns[column])

    unknown = lookups.unknown_columns(key, expr)
    if unknown:
        return [(path, line, message) for message in unknown]
    try:
        kind = expr.static_type(
            column_kind,
            known_columns=info.columns,
            lookup_kind=lookups.kind,
            text_ordered=text_ordered,
        )
    except ExpressionError as exc:
        return [(path, line, f"{key}: {exc} (table {info.name})")]
    if key == "when" and kind not in (Kind.BOOL, Kind.JSON, Kind.ANY, Kind.NULL):
        # Only true fires a rule: a number or a text would silently never fire.
        message = f"'when' expects a boolean, got {kind.value}"
        return [(path, line, f"when: {message} (table {info.name})")]
    if key == "user_id" and kind in _NOT_USER_IDS:
        message = (
            f"user_id ({expr.text}) is {kind.value}: a userId is text or a number; "
            "fix: string(...) of it, if that is really the user's id"
        )
        return [(path, line, f"{message} (table {info.name})")]
    return []


# What a userId cannot be: a json value may hold text or a number, so it passes.
_NOT_USER_IDS = frozenset({Kind.BOOL, Kind.TIMESTAMP, Kind.DATE, Kind.ARRAY})


def _needs_full(
    rule: Rule, info: TableInfo, reason: str, fix: str | None = None
) -> str:
    return (
        f"rule '{rule.id}' {reason}, but table {info.name} has REPLICA IDENTITY "
        f"{info.replica_identity.upper()}; fix: {fix or full_fix([info.name])}"
    )


def _beyond(rule: Rule, old_key: tuple[str, ...]) -> list[str]:
    """The columns ``rule`` reads of a deleted row that its old image lacks."""
    columns: set[str] = set()
    for _, expr in rule.expressions():
        columns.update(ref.column for ref in expr.columns if ref.image != "new")
        for ref in expr.lookups:  # a lookup of a deleted row reads its key columns
            if (spec := rule.lookups.get(ref.lookup)) is not None:
                columns.update(spec.own_columns)
    return sorted(columns - set(old_key))


# Types whose large values PostgreSQL may store out of line (TOAST).
_TOASTABLE = ("text", "character varying", "json", "jsonb", "bytea", "xml")


def toast_risks(
    rulebook: Rulebook, catalog: dict[str, TableInfo]
) -> dict[str, list[str]]:
    """Per table without REPLICA IDENTITY FULL (for a partitioned table: with a
    partition without it), the columns update rules read that may be TOASTed: an
    update leaving such a value unchanged does not carry it, so the trait or
    property is left out of that call. ``full_fix(info.lacking(info.columns))``
    is the fix."""
    risks: dict[str, set[str]] = {}
    for rule in rulebook.rules:
        info = catalog.get(rule.table)
        if info is None or Action.UPDATE not in rule.on:
            continue
        if not info.lacking(info.columns):
            continue  # every old image carries every column
        for _, expr in rule.expressions():
            for ref in expr.columns:
                declared = info.columns.get(ref.column, "")
                if declared.startswith(_TOASTABLE) or declared.endswith("[]"):
                    risks.setdefault(rule.table, set()).add(ref.column)
    return {table: sorted(columns) for table, columns in sorted(risks.items())}
