"""Table names as the rulebook and the command line write them."""

from __future__ import annotations

import re


def qualify(table: str) -> str:
    """``merchants`` -> ``public.merchants``. A part may be quoted as in SQL
    (``public."Weird Name"``, what our fixes print): the quotes come off, since
    names are kept as the catalog spells them (``public.Weird Name``); a quoted
    name alone is a table of ``public``, periods and all (``"a.b"``)."""
    parts = _quoted_parts(table)
    if parts is None:
        return table if "." in table else f"public.{table}"
    first, second = parts
    return f"public.{first}" if second is None else f"{first}.{second}"


def dotted_schema(table: str) -> str | None:
    """The schema ``table`` names when it holds a period, which only a quoted one
    can: tables are known as ``schema.table`` (wal2json names them so too), and
    such a schema would read as another split of the name."""
    parts = _quoted_parts(table)
    if parts is None or parts[1] is None or "." not in parts[0]:
        return None
    return parts[0]


def _quoted_parts(name: str) -> tuple[str, str | None] | None:
    """The one or two parts of a name with SQL's quotes off each quoted part
    (doubled quotes inside one are one); None for a name without quotes, or one
    that is not one or two such parts."""
    if '"' not in name:
        return None
    found = _QUOTED_NAME.fullmatch(name)
    if found is None:
        return None
    quoted, plain, quoted_table, plain_table = found.groups()
    first = plain if quoted is None else quoted.replace('""', '"')
    if quoted_table is None and plain_table is None:
        return first, None
    second = plain_table if quoted_table is None else quoted_table.replace('""', '"')
    return first, second


_PART = r'(?:"((?:[^"]|"")*)"|([^".]+))'
_QUOTED_NAME = re.compile(rf"{_PART}(?:\.{_PART})?")
