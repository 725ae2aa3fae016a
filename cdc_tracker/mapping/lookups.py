"""Related rows for rule expressions: one query per (table, key), through a cache.

``Lookups.for_rulebook(rulebook, dsn_or_pool)`` builds the provider a ``Mapper``
takes (``None`` when the rulebook declares no lookups). ``row(spec, key)`` returns
the related row's columns the rulebook uses, converted like the columns of a change
(``cdc_tracker.mapping.values``), or None when no row matches. Rows, and their
absence, are cached for ``CACHE_TTL_SECONDS`` in an LRU of ``CACHE_ENTRIES``: a
change to a related row is seen within that time. A lookup reads the related row
as it is when the change is mapped, not as it was at the change's commit.

Failures, by who handles them::

    LookupMissing       (an EvaluationError) no row matches: the rule's lookup
                        says skip it or make it a dead letter
    EvaluationError     the lookup cannot work for this row (a gone column, an
                        ambiguous key): a dead letter
    SourceUnavailable   the query could not run (database down, pool timeout):
                        the caller retries the window; never a dead letter

Messages name the lookup, the table and the key columns, never key values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

import psycopg
import structlog
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg_pool import ConnectionPool

from cdc_tracker.errors import SourceError, SourceUnavailable
from cdc_tracker.mapping.ttl_cache import TtlCache
from cdc_tracker.mapping.values import converter_for
from cdc_tracker.model import TableInfo
from cdc_tracker.rules.expr import EvaluationError
from cdc_tracker.rules.lookup_spec import LookupSpec
from cdc_tracker.rules.rulebook import Rulebook
from cdc_tracker.rules.schema import Problem
from cdc_tracker.source.catalog import read_catalog, role_sql, table_access
from cdc_tracker.source.connection import connect_timeout

log = structlog.get_logger(__name__)

CACHE_ENTRIES = 10_000
CACHE_TTL_SECONDS = 60.0
POOL_TIMEOUT_SECONDS = 10.0
_SESSION = (
    "SET TimeZone = 'UTC'",  # values printed as wal2json prints them
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'iso_8601'",
    "SET extra_float_digits = 3",
)


class LookupMissing(EvaluationError):
    """No row of the lookup's table matches the change's key (or the key is null)."""

    def __init__(self, spec: LookupSpec) -> None:
        super().__init__(
            f"lookup {spec.name} found no row in {spec.table} for {spec.describe_key()}"
        )
        self.spec = spec


@dataclass(slots=True)
class LookupStats:
    """Counters for ``status`` and tests: queries run, cache hits, rules skipped."""

    queries: int = 0
    cache_hits: int = 0
    no_row: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # by rule id

    def count_skip(self, rule: str) -> None:
        self.skipped[rule] = self.skipped.get(rule, 0) + 1


@dataclass(frozen=True, slots=True)
class _Source:
    """What one query reads: a table by some of its columns."""

    table: str
    key: tuple[str, ...]


class Lookups:
    """Finds related rows on a pooled connection; see the module docstring."""

    def __init__(
        self,
        columns: dict[_Source, frozenset[str]],
        pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]],
        zone: tzinfo,
        *,
        owns_pool: bool = False,
    ) -> None:
        self.pool = pool
        self.zone = zone
        self.stats = LookupStats()
        self.cache = TtlCache(CACHE_ENTRIES, CACHE_TTL_SECONDS)
        self._columns = {source: sorted(names) for source, names in columns.items()}
        self._types: dict[str, TableInfo] = {}
        self._owns_pool = owns_pool

    @classmethod
    def for_rulebook(
        cls,
        rulebook: Rulebook,
        source: str | ConnectionPool[psycopg.Connection[tuple[Any, ...]]],
    ) -> Lookups | None:
        """The provider for ``rulebook``, or None when it declares no lookups.

        ``source`` is a dsn (a pool of 1 to 2 connections is opened in the
        background and closed by ``close``) or a pool the caller owns.
        """
        columns = used_columns(rulebook)
        if not columns:
            return None
        if isinstance(source, ConnectionPool):
            return cls(columns, source, rulebook.timezone)
        return cls(columns, open_pool(source), rulebook.timezone, owns_pool=True)

    def __enter__(self) -> Lookups:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pool if ``for_rulebook`` opened it; safe to call twice."""
        if self._owns_pool and not self.pool.closed:
            self.pool.close()

    def row(self, spec: LookupSpec, key: tuple[Any, ...]) -> dict[str, Any] | None:
        """The related row's used columns, converted; None when no row matches.

        ``key`` holds the values of ``spec.own_columns``. Raises as the module
        docstring says.
        """
        if any(value is None for value in key):
            return None  # null = anything is never true in SQL
        source = _Source(spec.table, spec.related_columns)
        cache_key = (source, key)
        try:
            hit, found = self.cache.get(cache_key)
        except TypeError:  # an unhashable key value (the schema check refuses them)
            raise EvaluationError(
                f"lookup {spec.name}: the key {spec.describe_key()} is not a scalar"
            ) from None
        if hit:
            self.stats.cache_hits += 1
            return found  # type: ignore[no-any-return]
        found = self._fetch(spec, source, key)
        self.cache.put(cache_key, found)
        if found is None:
            self.stats.no_row += 1
        return found

    def _fetch(
        self, spec: LookupSpec, source: _Source, key: tuple[Any, ...]
    ) -> dict[str, Any] | None:
        columns = self._columns.get(source, [])
        with _translated(spec), self.pool.connection() as conn:
            info = self._table(conn, spec)
            self.stats.queries += 1
            rows = conn.execute(_query(source, columns), key).fetchmany(2)
        if len(rows) > 1:
            raise EvaluationError(
                f"lookup {spec.name} found more than one row in {spec.table} for "
                f"{spec.describe_key()}; its key must be unique"
            )
        if not rows:
            return None
        return {
            name: self._convert(spec, info, name, raw)
            for name, raw in zip(columns, rows[0], strict=True)
        }

    def _table(
        self, conn: psycopg.Connection[tuple[Any, ...]], spec: LookupSpec
    ) -> TableInfo:
        info = self._types.get(spec.table)
        if info is None:
            info = read_catalog(conn, [spec.table]).get(spec.table)
            if info is None:
                raise EvaluationError(
                    f"lookup {spec.name}: table {spec.table} does not exist"
                )
            self._types[spec.table] = info
        return info

    def _convert(self, spec: LookupSpec, info: TableInfo, column: str, raw: Any) -> Any:
        if raw is None:
            return None
        declared = info.columns.get(column, "text")
        try:
            return converter_for(declared, self.zone)(raw)
        except (ValueError, KeyError, IndexError) as exc:
            raise EvaluationError(
                f"lookup {spec.name}: cannot convert column '{column}' of type "
                f"{declared}"
            ) from exc


def used_columns(rulebook: Rulebook) -> dict[_Source, frozenset[str]]:
    """The columns each lookup query must select: every one an expression names."""
    owners = [(spec.lookups, [spec.user_id]) for spec in rulebook.tables.values()]
    owners += [
        (rule.lookups, [expr for _, expr in rule.expressions()])
        for rule in rulebook.rules
    ]
    found: dict[_Source, set[str]] = {}
    for lookups, expressions in owners:
        for expr in expressions:
            for ref in expr.lookups:
                spec = lookups[ref.lookup]
                source = _Source(spec.table, spec.related_columns)
                found.setdefault(source, set()).add(ref.column)
    return {source: frozenset(names) for source, names in found.items()}


def open_pool(dsn: str) -> ConnectionPool[psycopg.Connection[tuple[Any, ...]]]:
    """A pool of 1 to 2 autocommit connections, opening in the background."""
    pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = ConnectionPool(
        dsn,
        min_size=1,
        max_size=2,
        open=False,
        name="cdc-tracker-lookups",
        kwargs={
            "autocommit": True,
            "application_name": "cdc-tracker-lookups",
            "connect_timeout": connect_timeout(dsn),
        },
        configure=_configure,
        timeout=POOL_TIMEOUT_SECONDS,
    )
    pool.open(wait=False)
    return pool


def _configure(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    for statement in _SESSION:
        conn.execute(statement)


def _query(source: _Source, columns: list[str]) -> sql.Composed:
    schema, _, table = source.table.partition(".")
    return sql.SQL("SELECT {columns} FROM {table} WHERE {match} LIMIT 2").format(
        columns=sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier(name)) for name in columns
        )
        if columns
        else sql.SQL("1"),
        table=sql.Identifier(schema, table),
        match=sql.SQL(" AND ").join(
            sql.SQL("{} = %s").format(sql.Identifier(name)) for name in source.key
        ),
    )


@contextmanager
def _translated(spec: LookupSpec) -> Iterator[None]:
    """psycopg errors -> ours: an outage is retried, a broken lookup dead-lettered."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        # PoolTimeout is an OperationalError too: no connection within the timeout.
        raise SourceUnavailable(
            f"lookup {spec.name} on {spec.table} could not run: "
            f"{type(exc).__name__} {exc.sqlstate or ''}".rstrip()
        ) from exc
    except (pgerrors.UndefinedTable, pgerrors.UndefinedColumn) as exc:
        raise EvaluationError(
            f"lookup {spec.name}: {spec.table} or a column it reads is gone "
            "(dropped or renamed?)"
        ) from exc
    except psycopg.Error as exc:
        # The condition's name, not the server's message, which may quote a key
        # value: "InvalidTextRepresentation" says enough (a key that is no label
        # of the column's enum, say).
        raise EvaluationError(
            f"lookup {spec.name} on {spec.table} failed: {type(exc).__name__} "
            f"(SQLSTATE {exc.sqlstate})"
        ) from exc
    except SourceError as exc:  # from read_catalog: the same split
        if isinstance(exc, SourceUnavailable):
            raise
        raise EvaluationError(
            f"lookup {spec.name}: cannot read the columns of {spec.table}"
        ) from exc


def unreadable_lookups(
    conn: psycopg.Connection[tuple[object, ...]],
    rulebook: Rulebook,
    catalog: dict[str, TableInfo],
) -> list[Problem]:
    """Each lookup whose table this role may not read (SELECT on it and USAGE on
    its schema), as a problem at its line: every change of its rules would be a
    dead letter. A table the catalog lacks is ``check_schema``'s to report."""
    access = {row.table: row for row in table_access(conn, sorted(catalog))}
    role = role_sql(conn)  # as the doctor writes it
    problems: list[Problem] = []
    for spec in rulebook.lookup_specs:
        found = access.get(spec.table)
        if found is None or found.readable:
            continue  # a table the catalog lacks is said by check_schema
        problems.append(
            (
                str(rulebook.path),
                spec.line,
                f"lookup '{spec.name}': this role may not read {spec.table}; "
                f"fix: {found.grants(role)}",
            )
        )
    return problems
