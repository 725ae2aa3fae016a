"""A page in delivery, and which of its rows are done.

A row is done once every call mapped from it, and every call of the rows before
it, was acknowledged or dead-lettered. ``--resume`` starts after the last row
done, so a stop costs at most the calls of the rows not yet done, sent again with
the same messageIds. A row's dead letters are stored once the row is done, not
before: a resume maps the rows not done again and would make them again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.model import DeadLetter
from cdc_tracker.replay.reader import Position, Row


@dataclass(frozen=True, slots=True)
class Done:
    """Rows a delivery finished: how many, the position after the last of them
    (``None`` when none), and their dead letters."""

    rows: int
    position: Position | None
    dead: list[DeadLetter]


@dataclass(slots=True)
class Page:
    """A mapped page of one table.

    ``rows`` are numbered from ``first`` (the ``ordinal`` of their changes, calls
    and dead letters); ``calls`` are in row order; ``dead`` holds the dead letters
    of the rows not yet done; ``done`` counts the rows done, from the first.
    """

    table: str
    rows: list[Row]
    first: int
    position_of: Callable[[Row], Position]
    calls: list[EncodedCall] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    done: int = 0

    def waiting(self, handled: int) -> EncodedCall | None:
        """The first call not handled when the first ``handled`` calls were."""
        return self.calls[handled] if handled < len(self.calls) else None

    def finish(self, waiting: EncodedCall | None) -> Done:
        """Mark done the rows before the one ``waiting`` was made from (every row
        when ``None``); return them with their dead letters, taken from ``dead``."""
        end = len(self.rows) if waiting is None else waiting.ordinal - self.first
        rows = max(0, end - self.done)
        if not rows:
            return Done(0, None, [])
        self.done = end
        bound = self.first + end
        due = [letter for letter in self.dead if letter.ordinal < bound]
        self.dead = [letter for letter in self.dead if letter.ordinal >= bound]
        return Done(rows, self.position_of(self.rows[end - 1]), due)
