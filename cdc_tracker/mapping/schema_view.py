"""What the mapper knows of the live schema, to tell a gone column from a TOASTed one.

A column a rule reads may be absent from a change for two reasons: wal2json leaves
out an unchanged TOASTed value (unknown, so the trait is left out), or the column was
dropped or renamed (the rule no longer fits: a dead letter, and an error in the log).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from cdc_tracker.model import Action, Change, TableInfo

log = structlog.get_logger(__name__)

REFRESH_SECONDS = 5.0


class SchemaView:
    """Tables as last read from the catalog; re-read a table at most every few seconds.

    ``reload(table)`` returns the table's current description (``None`` when it is
    gone); it is called when an update or delete lacks a column a rule reads.
    """

    def __init__(
        self,
        tables: dict[str, TableInfo],
        reload: Callable[[str], TableInfo | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tables = dict(tables)
        self._reload = reload
        self._clock = clock
        self._read_at: dict[str, float] = {}
        self._reported: set[tuple[str, str]] = set()

    def column_gone(self, change: Change, column: str) -> bool:
        """Whether ``column``, absent from ``change``, no longer exists in its table."""
        if change.action is Action.INSERT:
            gone = True  # an insert carries every column
        else:
            # An update or delete lacks columns for other reasons too: an
            # unchanged TOASTed value, an old image holding only the replica
            # identity as it was when the change was logged (the key, an index's
            # columns, or the whole row). Only the table itself can tell.
            info = self._fresh(change.table)
            gone = info is None or column not in info.columns
        if gone and (change.table, column) not in self._reported:
            self._reported.add((change.table, column))
            log.error(
                "rulebook column missing from changes; dead-lettering them",
                table=change.table,
                column=column,
                hint="the column was dropped or renamed: update the rulebook",
            )
        return gone

    def _fresh(self, table: str) -> TableInfo | None:
        now = self._clock()
        if now - self._read_at.get(table, float("-inf")) >= REFRESH_SECONDS:
            self._read_at[table] = now
            info = self._reload(table)
            if info is None:
                self._tables.pop(table, None)
            else:
                self._tables[table] = info
        return self._tables.get(table)
