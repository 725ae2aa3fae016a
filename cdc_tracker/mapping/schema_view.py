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
# An update's whole old row (REPLICA IDENTITY FULL) lacks a column only when the
# column is gone, or new since the change: the table is read again sooner then.
WHOLE_ROW_REFRESH_SECONDS = 0.2


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
            whole = _whole_old_row(change)
            age = WHOLE_ROW_REFRESH_SECONDS if whole else REFRESH_SECONDS
            info = self._fresh(change.table, age)
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

    def _fresh(self, table: str, age: float) -> TableInfo | None:
        """The table as read at most ``age`` seconds ago."""
        now = self._clock()
        if now - self._read_at.get(table, float("-inf")) >= age:
            self._read_at[table] = now
            info = self._reload(table)
            if info is None:
                self._tables.pop(table, None)
            else:
                self._tables[table] = info
        return self._tables.get(table)


def _whole_old_row(change: Change) -> bool:
    """Whether an update's old image looks like its whole row: every column of
    the new image, and more than the primary key. (A covering identity index can
    look so too: that only makes the table be read again sooner.)"""
    old, new = change.old, change.new
    if old is None or new is None:
        return False
    return old.keys() >= new.keys() and not old.keys() <= set(change.key)
