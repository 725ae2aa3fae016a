"""The rulebook: it loads, and its tables, columns, types and identities fit."""

from __future__ import annotations

import re

from cdc_tracker.errors import CdcTrackerError, RulebookError, locate
from cdc_tracker.ops.doctor.context import Context
from cdc_tracker.ops.doctor.result import Finding, failed, passed
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.rules.schema import Problem, check_schema
from cdc_tracker.source.catalog import read_catalog
from cdc_tracker.wording import counted

_IDENTITY = "REPLICA IDENTITY"
_FIX = re.compile(r";?\s*fix: (.*)$")


def rulebook(ctx: Context) -> Finding:
    """The rulebook loads; on success ``ctx.rulebook`` (and, with a database, the
    catalog of its tables) are set for the checks that follow."""
    path = ctx.settings.rulebook
    try:
        loaded = load_rulebook(path)
    except RulebookError as exc:
        if not path.exists():
            return failed(
                "rulebook",
                f"no rulebook at {path}",
                "point --rulebook or CDC_TRACKER_RULEBOOK at your rulebook "
                "(a relative path is read from the working directory)",
            )
        return failed(
            "rulebook",
            f"{counted(len(exc.problems), 'problem')}:\n{exc}",
            f"edit {path}; 'cdc-tracker check {path}' checks it alone",
        )
    except CdcTrackerError as exc:
        return failed("rulebook", str(exc), "set CDC_TRACKER_RULEBOOK or --rulebook")
    ctx.rulebook = loaded
    if ctx.conn is not None:
        # The tables lookups read too, tracked or not, as the daemon checks them.
        ctx.catalog = read_catalog(ctx.conn, loaded.schema_tables)
    return passed(
        "rulebook",
        f"{path}: {loaded.size}",
    )


def schema_fit(ctx: Context) -> Finding:
    """Every table and column the rulebook names exists, with a usable type."""
    problems = [p for p in _problems(ctx) if _IDENTITY not in p[2]]
    if problems:
        return failed(
            "rulebook schema",
            "\n".join(locate(*problem) for problem in problems),
            "change the rulebook or the schema so that they agree",
        )
    return passed("rulebook schema", "tables, columns and types fit")


def replica_identity(ctx: Context) -> Finding:
    """Tables whose rules read old values (or deleted rows) have REPLICA IDENTITY
    FULL."""
    problems = [p for p in _problems(ctx) if _IDENTITY in p[2]]
    name = "replica identity"
    if problems:
        fixes = sorted({m[1] for p in problems if (m := _FIX.search(p[2]))})
        return failed(
            name,
            "\n".join(
                locate(path, line, _FIX.sub("", text)) for path, line, text in problems
            ),
            "\n".join(fixes) or "ALTER TABLE ... REPLICA IDENTITY FULL;",
        )
    tracked = ctx.rules().tables
    full = sorted(
        t for t, info in ctx.catalog.items() if info.full_identity and t in tracked
    )
    detail = f"FULL on {', '.join(full)}" if full else "no rule needs old values"
    return passed(name, detail)


def _problems(ctx: Context) -> list[Problem]:
    rules = ctx.rules()
    ctx.db()
    return check_schema(rules, ctx.catalog)
