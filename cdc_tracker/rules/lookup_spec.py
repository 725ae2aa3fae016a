"""Lookups of the rulebook: related rows a table or a rule reads by key.

A ``lookups`` section maps a name to the table to read and the key to match::

    lookups:
      merchant:
        table: public.merchants
        key: {id: merchant_id}     # column of public.merchants: column of this row
        missing: skip              # or dead_letter (the default)

Expressions then name the related row's columns as ``merchant.shop_domain``. This
module reads and checks the declarations (``read_lookups``) and the references
(``unknown_references``); ``cdc_tracker.mapping.lookups`` runs them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from cdc_tracker.rules.expr import Expression
from cdc_tracker.rules.expr_parse import KEYWORDS
from cdc_tracker.rules.names import qualify
from cdc_tracker.rules.yamlfile import LineDict

MissingPolicy = Literal["skip", "dead_letter"]
Report = Callable[[int | None, str], None]
UnknownKeys = Callable[[LineDict, set[str], str], None]

LOOKUP_KEYS = {"table", "key", "missing", "description"}
_POLICIES: tuple[MissingPolicy, ...] = ("skip", "dead_letter")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED = frozenset({"new", "old", *KEYWORDS})


@dataclass(frozen=True, slots=True)
class LookupSpec:
    """A related row found by key: the row of ``table`` matching every key pair.

    ``key`` pairs a column of ``table`` with a column of the changed row (the new
    row, or the old one for a delete). ``missing`` says what a rule does when no
    row matches (a null key matches none): ``skip`` (the rule does not fire, and
    the skip is counted) or ``dead_letter``.
    """

    name: str
    table: str
    key: tuple[tuple[str, str], ...]
    missing: MissingPolicy
    line: int

    @property
    def related_columns(self) -> tuple[str, ...]:
        return tuple(related for related, _ in self.key)

    @property
    def own_columns(self) -> tuple[str, ...]:
        return tuple(own for _, own in self.key)

    def describe_key(self) -> str:
        """``id = merchant_id``: the key as column names, never values."""
        return " and ".join(f"{related} = {own}" for related, own in self.key)


def read_lookups(
    body: LineDict, report: Report, unknown_keys: UnknownKeys
) -> dict[str, LookupSpec]:
    """The ``lookups`` of a table or rule body; each problem goes to ``report``."""
    section = body.get("lookups")
    if section is None:
        return {}
    if not isinstance(section, LineDict):
        report(
            body.lines["lookups"],
            "'lookups' maps a name to a mapping with 'table' and 'key'",
        )
        return {}
    found: dict[str, LookupSpec] = {}
    for name, item in section.items():
        spec = _lookup(str(name), item, section.lines[name], report, unknown_keys)
        if spec is not None:
            found[spec.name] = spec
    return found


def _lookup(
    name: str, body: Any, line: int, report: Report, unknown_keys: UnknownKeys
) -> LookupSpec | None:
    if not _NAME.fullmatch(name) or name.lower() in _RESERVED:
        report(
            line,
            f"lookup name '{name}' must be a plain name (letters, digits, _) "
            "other than new, old and the expression keywords",
        )
        return None
    if not isinstance(body, LineDict):
        report(line, f"lookup '{name}' needs a mapping with 'table' and 'key'")
        return None
    unknown_keys(body, LOOKUP_KEYS, f"lookup '{name}'")
    table = body.get("table")
    if not isinstance(table, str) or not table.strip():
        report(line, f"lookup '{name}' needs 'table': the table to read")
        table = None
    elif "\x00" in table:
        report(
            body.lines["table"],
            f"lookup '{name}': table {table!r} holds a NUL character, which no "
            "PostgreSQL name can",
        )
        table = None
    key = _key(name, body, line, report)
    missing = body.get("missing", "dead_letter")
    if missing not in _POLICIES:
        report(
            body.lines["missing"],
            f"lookup '{name}': 'missing' is skip or dead_letter, not {missing!r}",
        )
        return None
    if table is None or key is None:
        return None
    table = table.strip()
    return LookupSpec(name, qualify(table), key, missing, line)


def _key(
    name: str, body: LineDict, line: int, report: Report
) -> tuple[tuple[str, str], ...] | None:
    key = body.get("key")
    if (
        isinstance(key, LineDict)
        and key
        and all(
            isinstance(related, str) and related and isinstance(own, str) and own
            for related, own in key.items()
        )
    ):
        return tuple((str(related), str(own)) for related, own in key.items())
    report(
        body.lines.get("key", line),
        f"lookup '{name}' needs 'key': columns of its table mapped to columns "
        "of this row, such as {id: merchant_id}",
    )
    return None


def unknown_references(
    key: str, expr: Expression, lookups: dict[str, LookupSpec]
) -> list[str]:
    """A message for each ``<lookup>.<column>`` of ``expr`` naming no lookup."""
    messages = []
    for ref in sorted(expr.lookups, key=lambda ref: (ref.lookup, ref.column)):
        if ref.lookup in lookups:
            continue
        close = difflib.get_close_matches(ref.lookup, sorted(lookups), n=1)
        if close:
            hint = f"; did you mean '{close[0]}'?"
        elif lookups:
            hint = f"; declared: {', '.join(sorted(lookups))}"
        else:
            hint = "; declare it under 'lookups' on the table or the rule"
        messages.append(f"{key}: '{ref.lookup}.{ref.column}' names no lookup{hint}")
    return messages
