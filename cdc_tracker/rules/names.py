"""Table names as the rulebook and the command line write them."""

from __future__ import annotations

import re


def qualify(table: str) -> str:
    """``merchants`` -> ``public.merchants``. A part may be quoted as in SQL
    (``public."Weird Name"``, what our fixes print): the quotes come off, since
    names are kept as the catalog spells them (``public.Weird Name``)."""
    if '"' in table:
        table = _unquoted(table)
    return table if "." in table else f"public.{table}"


def _unquoted(name: str) -> str:
    """The name with SQL's quotes off each quoted part (doubled quotes inside one
    are one); a name that is not one or two such parts stays as it is."""
    found = _QUOTED_NAME.fullmatch(name)
    if found is None:
        return name
    quoted, plain, quoted_table, plain_table = found.groups()
    first = plain if quoted is None else quoted.replace('""', '"')
    if quoted_table is None and plain_table is None:
        return first
    second = plain_table if quoted_table is None else quoted_table.replace('""', '"')
    return f"{first}.{second}"


_PART = r'(?:"((?:[^"]|"")*)"|([^".]+))'
_QUOTED_NAME = re.compile(rf"{_PART}(?:\.{_PART})?")
