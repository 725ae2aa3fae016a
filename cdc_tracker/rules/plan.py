"""The tracking plan as the rulebook loader builds it: tables, rules, the rulebook.

Plain data with parsed expressions, indexed by (table, action) for the hot path.
``cdc_tracker.rules.rulebook`` builds it from YAML and validates it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any, Literal

from cdc_tracker.model import Action
from cdc_tracker.rules.expr import Expression
from cdc_tracker.rules.lookup_spec import LookupSpec
from cdc_tracker.wording import counted

Fields = dict[str, "Expression | Fields"]


@dataclass(slots=True)
class TableSpec:
    """A tracked table: where its calls' userId and its replay cursor come from."""

    name: str
    user_id: Expression
    cursor: str | None
    line: int
    lookups: dict[str, LookupSpec] = field(default_factory=dict)
    # How insert-triggered calls are named: by primary key (a backfill makes the
    # same ids), or by WAL position (for tables whose keys are reused).
    insert_ids: Literal["key", "position"] = "key"
    user_id_line: int | None = None  # where ``user_id`` is written
    cursor_line: int | None = None  # where ``cursor`` is written


@dataclass(slots=True)
class Rule:
    """One identify or track rule, its expressions already parsed."""

    kind: Literal["identify", "track"]
    id: str
    table: str
    on: frozenset[Action]
    when: Expression | None
    user_id: Expression
    fields: Fields
    event: str | None = None
    integrations: dict[str, bool] | None = None
    context: dict[str, Any] | None = None
    description: str | None = None
    line: int = 0
    # The line of each key of the rule, and of each field as ``traits.company.plan``.
    lines: dict[str, int] = field(default_factory=dict)
    # The table's lookups and the rule's own, by name.
    lookups: dict[str, LookupSpec] = field(default_factory=dict)
    # How insert-triggered calls are named: by primary key (a backfill makes the
    # same ids), or by WAL position (for tables whose keys are reused).
    insert_ids: Literal["key", "position"] = "key"

    def expressions(self) -> Iterator[tuple[str, Expression]]:
        """Every expression of the rule, with the key it sits under."""
        if self.when is not None:
            yield "when", self.when
        yield "user_id", self.user_id
        yield from _leaves(
            self.fields, "traits" if self.kind == "identify" else "properties"
        )

    @property
    def needs_old(self) -> bool:
        return any(expr.needs_old for _, expr in self.expressions())


def _leaves(fields: Fields, prefix: str) -> Iterator[tuple[str, Expression]]:
    for name, value in fields.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}.{name}")
        else:
            yield f"{prefix}.{name}", value


@dataclass(slots=True)
class Rulebook:
    """A validated rulebook, indexed by table and action for the hot path."""

    path: Path
    version: int
    timezone: tzinfo
    tables: dict[str, TableSpec]
    rules: list[Rule]
    # Of the file's bytes the rules were read from: tells whether it changed since.
    digest: str = ""
    _index: dict[tuple[str, Action], list[Rule]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for rule in self.rules:
            for action in rule.on:
                self._index.setdefault((rule.table, action), []).append(rule)

    def rules_for(self, table: str, action: Action) -> list[Rule]:
        return self._index.get((table, action), [])

    @property
    def size(self) -> str:
        """``2 tables, 5 rules``, for messages."""
        return (
            f"{counted(len(self.tables), 'table')}, {counted(len(self.rules), 'rule')}"
        )

    @property
    def schema_tables(self) -> list[str]:
        """The tracked tables and the tables lookups read: what schema checks need."""
        return sorted({spec.table for spec in self.lookup_specs} | set(self.tables))

    @property
    def lookup_specs(self) -> list[LookupSpec]:
        """Every lookup declared, on a table or on a rule, once (a rule holds its
        table's lookups too), by line and name."""
        declared = [spec.lookups for spec in self.tables.values()]
        declared += [rule.lookups for rule in self.rules]
        specs = {spec for found in declared for spec in found.values()}
        return sorted(specs, key=lambda spec: (spec.line, spec.name))
