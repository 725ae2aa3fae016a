"""Which rows of a page in delivery are done, and which dead letters go with them."""

from __future__ import annotations

from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.model import DeadLetter, Lsn
from cdc_tracker.replay.page import Page
from cdc_tracker.replay.reader import Position, Row


def _position(row: Row) -> Position:
    return Position(str(row[0]), (str(row[1]),))


def _call(ordinal: int, rule: str) -> EncodedCall:
    body = b'{"type":"track"}'
    return EncodedCall(
        f"{rule}-{ordinal}", "u", body, rule, "t", Lsn(0), ordinal, "", ""
    )


def _letter(ordinal: int) -> DeadLetter:
    return DeadLetter("t", "r", "refused", Lsn(0), ordinal)


def _page(dead: list[DeadLetter]) -> Page:
    """Rows 11 to 14: row 11 makes two calls, row 12 none, rows 13 and 14 one."""
    rows: list[Row] = [(f"2026-11-0{day}", str(day)) for day in range(1, 5)]
    calls = [_call(11, "a"), _call(11, "b"), _call(13, "a"), _call(14, "a")]
    return Page("t", rows, 11, _position, calls, dead)


def test_a_row_is_done_once_its_calls_and_those_before_it_are_handled() -> None:
    page = _page([])

    inside_first = page.finish(page.waiting(1))
    at_third = page.finish(page.waiting(2))
    again = page.finish(page.waiting(2))
    at_end = page.finish(page.waiting(4))

    assert (inside_first.rows, inside_first.position) == (0, None)
    assert (at_third.rows, at_third.position) == (2, Position("2026-11-02", ("2",)))
    assert (again.rows, again.position) == (0, None)
    assert (at_end.rows, at_end.position) == (2, Position("2026-11-04", ("4",)))
    assert page.done == 4


def test_dead_letters_are_released_with_their_row_only() -> None:
    """A row's dead letters, made in mapping or by the destination, wait until
    the row is done: a resume would make those of the other rows again."""
    page = _page([_letter(12)])
    page.dead += [_letter(14)]  # refused by the destination, ahead of row 13

    done = page.finish(page.waiting(2))

    assert [letter.ordinal for letter in done.dead] == [12]
    assert [letter.ordinal for letter in page.dead] == [14]
    assert [letter.ordinal for letter in page.finish(None).dead] == [14]
