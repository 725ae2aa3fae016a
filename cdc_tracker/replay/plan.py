"""What a replay runs: the rules a snapshot can honestly derive, and the tables.

A replay sees each row as it is now, as if it had just been inserted. Rules that
fire on insert and read only the new row can run; a rule that fires only on update
or delete, or reads the old row (``old.x``, ``changed(x)``), needs history that a
snapshot does not have, so it is skipped and the report says so.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from cdc_tracker.errors import ConfigError
from cdc_tracker.mapping.values import base_type
from cdc_tracker.model import Action, TableInfo
from cdc_tracker.rules.rulebook import Rule, Rulebook, qualify

CURSOR_TYPES = ("timestamp with time zone", "timestamp without time zone")


def is_cursor_type(declared: str) -> bool:
    """Whether a column of this declared type can be a replay's cursor."""
    return base_type(declared) in CURSOR_TYPES


@dataclass(frozen=True, slots=True)
class Skipped:
    """A rule the replay leaves out, and why (a sentence for the operator)."""

    rule: str
    table: str
    reason: str


@dataclass(slots=True)
class Plan:
    """The rules to run (as a rulebook of their own), the tables to read, the
    rest; ``by_rule`` when they were picked by ``--rule``."""

    rulebook: Rulebook
    tables: list[str]
    skipped: list[Skipped]
    by_rule: bool = False

    def report(self) -> list[str]:
        """One line per table read and per rule skipped, for the operator."""
        lines = []
        for table in self.tables:
            rules = [rule for rule in self.rulebook.rules if rule.table == table]
            lines.append(f"replaying {table}: {', '.join(r.id for r in rules)}")
            for rule in rules:
                if rule.kind == "track" and Action.UPDATE in rule.on:
                    lines.append(
                        f"note: rule '{rule.id}' fires on update too: a row whose "
                        "event the daemon sent from an update is sent again, named "
                        "as its insert's"
                    )
            positional = self.rulebook.tables[table].insert_ids == "position"
            if positional and any(rule.kind == "track" for rule in rules):
                lines.append(
                    f"note: {table} names insert calls by their WAL position "
                    "(insert_ids: position), which a row read now does not have: "
                    "its events get messageIds of their own, so rows the daemon "
                    "already shipped send their events again"
                )
        lines += [
            f"skipped rule '{item.rule}' ({item.table}): {item.reason}"
            for item in self.skipped
        ]
        return lines


def skip_reason(rule: Rule) -> str | None:
    """Why a snapshot cannot run ``rule``, or ``None`` when it can."""
    if Action.INSERT not in rule.on:
        actions = " and ".join(sorted(action.value for action in rule.on))
        return (
            f"fires on {actions} only; a snapshot holds rows, not the {actions}s "
            "that changed them"
        )
    if rule.needs_old:
        return "reads the old row (old. or changed()); a snapshot has no history"
    return None


def make_plan(
    rulebook: Rulebook, tables: tuple[str, ...] = (), rules: tuple[str, ...] = ()
) -> Plan:
    """Select rules by ``--table`` and ``--rule``; raise ``ConfigError`` on a bad pick.

    Naming an unknown table or rule, or a rule that cannot be replayed, is an
    error; without ``--table``, the rules of a table without a ``cursor`` are
    skipped with the reason. A selection that leaves nothing to run makes a plan
    without rules:
    ``check_rules`` refuses it, once the plan's report has listed what was skipped.
    """
    wanted = {qualify(name) for name in tables}
    unknown = sorted(wanted - set(rulebook.tables))
    if unknown:
        raise ConfigError(
            f"--table {', '.join(unknown)}: not a table of the rulebook",
            hint=f"tracked tables: {', '.join(sorted(rulebook.tables))}",
        )
    candidates = [r for r in rulebook.rules if not wanted or r.table in wanted]
    if rules:
        candidates = _picked(candidates, rules, rulebook)
    runnable, skipped = [], []
    for rule in candidates:
        reason = skip_reason(rule)
        if reason is None and not wanted and rulebook.tables[rule.table].cursor is None:
            # Not asked for by name (--table refuses it): the other tables go on.
            reason = (
                "its table has no 'cursor' to replay by; give it one to backfill it"
            )
        if reason is None:
            runnable.append(rule)
        else:
            skipped.append(Skipped(rule.id, rule.table, reason))
    read = sorted({rule.table for rule in runnable})
    subset = Rulebook(
        rulebook.path,
        rulebook.version,
        rulebook.timezone,
        {name: rulebook.tables[name] for name in read},
        runnable,
        rulebook.digest,
    )
    return Plan(subset, read, skipped, by_rule=bool(rules))


def check_rules(plan: Plan) -> None:
    """Raise ``ConfigError`` when the plan runs no rule. Call it after showing
    ``plan.report()``: the hint points at the skipped rules listed there."""
    if plan.rulebook.rules:
        return
    hint = "choose others with --table/--rule"
    what = "nothing to replay: the selection has no rule"
    if plan.skipped:
        hint = f"see the skipped rules above, or {hint}"
        what = "nothing to replay: every selected rule is skipped"
    raise ConfigError(what, hint=hint)


def _picked(
    candidates: list[Rule], names: tuple[str, ...], book: Rulebook
) -> list[Rule]:
    by_id = {rule.id: rule for rule in candidates}
    unknown = [name for name in names if name not in by_id]
    if unknown:
        known = ", ".join(repr(rule.id) for rule in candidates) or "none"
        raise ConfigError(
            f"--rule {', '.join(map(repr, unknown))}: no such rule in {book.path}"
            " (within the --table selection)",
            hint=f"rules: {known}",
        )
    picked = [by_id[name] for name in dict.fromkeys(names)]
    refused = [(r.id, reason) for r in picked if (reason := skip_reason(r))]
    if refused:
        rule_id, reason = refused[0]
        raise ConfigError(f"rule '{rule_id}' cannot be replayed: it {reason}")
    return picked


def check_tables(plan: Plan, catalog: dict[str, TableInfo]) -> None:
    """Raise ``ConfigError`` listing every table a replay cannot page through.

    Each table needs a ``cursor`` in the rulebook naming a timestamp column, and a
    primary key (the second half of the page order, and the insert messageIds).
    """
    problems = []
    hints = []
    refused = set()
    book = plan.rulebook
    for name in plan.tables:
        spec = book.tables[name]
        where = f"{book.path}:{spec.line}"
        info = catalog.get(name)
        hint = _CURSOR_HINT
        if spec.cursor is None:
            problem = f"table {name} has no 'cursor' to replay by"
        elif info is None:
            problem, hint = f"table {name} does not exist in the database", ""
        elif spec.cursor not in info.columns:
            problem = f"cursor column '{spec.cursor}' is not in table {name}"
        elif not is_cursor_type(info.columns[spec.cursor]):
            problem = (
                f"cursor column '{spec.cursor}' of {name} is "
                f"{info.columns[spec.cursor]}, not a timestamp"
            )
        elif not info.key:
            problem = f"table {name} has no primary key to page by"
            hint = f"give {name} a primary key"
        else:
            continue
        problems.append(f"{where}: {problem}")
        hints.append(hint)
        refused.add(name)
    if problems:
        fixes = [hint for hint in dict.fromkeys(hints) if hint]
        if flags := _without(plan, refused):
            fixes.append(f"or replay the other tables alone: {flags}")
        raise ConfigError(
            "cannot replay:\n" + "\n".join(problems), hint="; ".join(fixes)
        )


def _without(plan: Plan, refused: set[str]) -> str:
    """The flags that select what ``plan`` selects, but the ``refused`` tables."""
    if plan.by_rule:  # --table would add the tables' other rules
        rules = [rule.id for rule in plan.rulebook.rules if rule.table not in refused]
        return " ".join(_flag("--rule", rule) for rule in rules)
    tables = [name for name in plan.tables if name not in refused]
    return " ".join(_flag("--table", name) for name in tables)


def _flag(flag: str, value: str) -> str:
    """``--rule 'A rule'``, for a shell; ``--rule=-Refund`` for a value that
    argparse would take for a flag."""
    joint = "=" if value.startswith("-") else " "
    return f"{flag}{joint}{shlex.quote(value)}"


_CURSOR_HINT = (
    "set 'cursor: <timestamp column>' under the table in the rulebook (e.g. updated_at)"
)
