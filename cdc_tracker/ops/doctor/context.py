"""What every check may look at: settings, a connection, the rulebook, the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from cdc_tracker.model import TableInfo
from cdc_tracker.rules.rulebook import Rulebook
from cdc_tracker.settings import Settings
from cdc_tracker.source.slot import translate_errors

Connection = psycopg.Connection[tuple[Any, ...]]


class NotChecked(Exception):
    """A check could not run because something it needs is missing.

    Raised by ``Context.db`` and ``Context.rules``; the runner reports the check as a
    warning naming the missing prerequisite (itself reported as a failure).
    """

    def __init__(self, reason: str, see: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.see = see


@dataclass(slots=True)
class Context:
    """Shared state of one doctor run; ``conn`` and ``rulebook`` are None when the
    connection or the rulebook failed its own check."""

    settings: Settings
    conn: Connection | None = None
    rulebook: Rulebook | None = None
    catalog: dict[str, TableInfo] = field(default_factory=dict)

    def db(self) -> Connection:
        """The open connection, or ``NotChecked`` when there is none."""
        if self.conn is None:
            raise NotChecked("no database connection", see="database")
        return self.conn

    def rules(self) -> Rulebook:
        """The loaded rulebook, or ``NotChecked`` when it did not load."""
        if self.rulebook is None:
            raise NotChecked("the rulebook did not load", see="rulebook")
        return self.rulebook

    def rows(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query; psycopg errors become ``SourceError``."""
        with translate_errors(self.settings.slot):
            return self.db().execute(query, params).fetchall()

    def row(self, query: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        """The single row ``query`` returns."""
        found = self.rows(query, params)
        assert len(found) == 1, "query must return exactly one row"
        return found[0]
