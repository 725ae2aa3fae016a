"""Check a rulebook against the live schema: tables, columns, types, identity.

Run at daemon start-up and by ``cdc-tracker check --dsn``. Each problem names the
rulebook file and line, and, where one exists, the statement that fixes it.
"""

from __future__ import annotations

from cdc_tracker.mapping.values import kind_of
from cdc_tracker.model import Action, TableInfo
from cdc_tracker.rules.expr import Expression, ExpressionError, Kind
from cdc_tracker.rules.rulebook import Rule, Rulebook

Problem = tuple[str, int | None, str]


def check_schema(rulebook: Rulebook, catalog: dict[str, TableInfo]) -> list[Problem]:
    """Every way the rulebook does not fit the database; empty when it fits."""
    path = str(rulebook.path)
    problems: list[Problem] = []
    for spec in rulebook.tables.values():
        info = catalog.get(spec.name)
        if info is None:
            problems.append((path, spec.line, f"table '{spec.name}' does not exist"))
            continue
        problems += _typed(path, spec.line, "user_id", spec.user_id, info)
        if spec.cursor is not None and spec.cursor not in info.columns:
            problems.append(
                (
                    path,
                    spec.line,
                    f"cursor column '{spec.cursor}' is not in {spec.name}",
                )
            )
    for rule in rulebook.rules:
        info = catalog.get(rule.table)
        if info is not None:
            problems += _rule_problems(path, rule, info)
    return problems


def _rule_problems(path: str, rule: Rule, info: TableInfo) -> list[Problem]:
    problems: list[Problem] = []
    for key, expr in rule.expressions():
        line = rule.lines.get(key, rule.lines.get(key.split(".")[0], rule.line))
        problems += _typed(path, line, key, expr, info)
    if rule.needs_old and not info.full_identity:
        problems.append((path, rule.line, _needs_full(rule, info, "reads old values")))
    if info.full_identity:
        return problems
    if rule.on - {Action.INSERT} and not info.key:
        problems.append(
            (
                path,
                rule.line,
                f"table {info.name} has no primary key and REPLICA IDENTITY "
                f"{info.replica_identity.upper()}: PostgreSQL does not decode its "
                f"updates and deletes; fix: ALTER TABLE {info.name} "
                "REPLICA IDENTITY FULL;",
            )
        )
    elif Action.DELETE in rule.on and (beyond_key := _non_key_columns(rule, info)):
        reason = f"reads {', '.join(beyond_key)} of deleted rows"
        problems.append((path, rule.line, _needs_full(rule, info, reason)))
    return problems


def _typed(
    path: str, line: int | None, key: str, expr: Expression, info: TableInfo
) -> list[Problem]:
    def column_kind(column: str) -> Kind | None:
        declared = info.columns.get(column)
        return None if declared is None else kind_of(declared)

    try:
        kind = expr.static_type(column_kind, known_columns=info.columns)
    except ExpressionError as exc:
        return [(path, line, f"{key}: {exc} (table {info.name})")]
    if key == "when" and kind not in (Kind.BOOL, Kind.JSON, Kind.ANY, Kind.NULL):
        # Only true fires a rule: a number or a text would silently never fire.
        message = f"'when' expects a boolean, got {kind.value}"
        return [(path, line, f"when: {message} (table {info.name})")]
    return []


def _needs_full(rule: Rule, info: TableInfo, reason: str) -> str:
    return (
        f"rule '{rule.id}' {reason}, but table {info.name} has REPLICA IDENTITY "
        f"{info.replica_identity.upper()}; fix: ALTER TABLE {info.name} "
        "REPLICA IDENTITY FULL;"
    )


def _non_key_columns(rule: Rule, info: TableInfo) -> list[str]:
    columns = {
        ref.column
        for _, expr in rule.expressions()
        for ref in expr.columns
        if ref.image != "new"
    }
    return sorted(columns - set(info.key))
