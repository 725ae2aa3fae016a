"""``Mapper.map_encoded`` (the daemon's and replay's path: calls encoded as they are
made, most without a ``RowView``) makes exactly what ``Mapper.map`` and
``encode_calls`` make, call for call and byte for byte, dead letters included.

The changes are real wal2json rows of a table with a column of every kind, read
from the test server's slot.
"""

from __future__ import annotations

from pathlib import Path

from cdc_tracker.daemon.shipping import encode_calls
from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.mapping.mapper import Mapper
from cdc_tracker.model import Call, DeadLetter
from cdc_tracker.rules.rulebook import load_rulebook
from tests.harness import live_changes
from tests.replay.test_values_match_live import ROWS, TYPES_TABLE

COLUMNS = [
    "id", "small", "whole", "oid_col", "exact", "loose", "real_col", "double_col",
    "amount", "flag", "word", "short", "code", "ident", "feeling", "moment", "wall",
    "day", "doc", "bin", "tags", "counts", "amounts", "grid", "span", "addr",
]  # fmt: skip

TRAITS = "".join(f"      {name}: {name}\n" for name in COLUMNS)
RULEBOOK = f"""\
version: 1
tables:
  public.kinds:
    user_id: id
identify:
  - table: kinds
    on: [insert, update, delete]
    traits:
{TRAITS}\
      nested:
        source: "'wal'"
        ratio: 1.5
        word: word
  - id: by_expression
    table: kinds
    on: [insert, update]
    user_id: lower(short)
    traits:
      loud: upper(word)
      before: old.word
track:
  - event: Word Changed
    table: kinds
    on: update
    when: changed(word)
    properties:
      from: old.word
      to: word
      flag: flag
  - event: Flagged
    table: kinds
    on: [insert, update]
    when: flag
    properties:
      amount: amount
      literal: "'yes'"
"""

MORE_ROWS = [
    # A numeric without a fraction beyond 64 bits, a json document deeper than
    # any encoder nests, a user id that is null for the second rule.
    "insert into kinds (loose, word, flag)"
    " values (123456789012345678901234, 'w', true)",
    "insert into kinds (doc, short) values ('" + "[" * 300 + "]" * 300 + "', null)",
    "alter table kinds replica identity full",
    "update kinds set word = 'changed', flag = true where id <= 3",
    "update kinds set amount = amount + 1 where id = 1",
    "delete from kinds where id = 2",
]


def _letter(letter: DeadLetter) -> tuple[object, ...]:
    return (letter.commit_lsn, letter.ordinal, letter.rule, letter.reason)


def _encoded(call: EncodedCall) -> tuple[object, ...]:
    return (
        call.message_id,
        call.user_id,
        call.body,
        call.rule,
        call.table,
        call.commit_lsn,
        call.ordinal,
        call.kind,
        call.event,
    )


def test_map_encoded_makes_what_map_then_encode_make(
    empty_db: str, tmp_path: Path
) -> None:
    path = tmp_path / "rulebook.yaml"
    path.write_text(RULEBOOK)
    rulebook = load_rulebook(path)
    statements = [TYPES_TABLE, *ROWS, *MORE_ROWS]
    changes = live_changes(empty_db, statements, ["public.kinds"])
    assert len(changes) == len(ROWS) + 2 + 3 + 1 + 1

    made: list[EncodedCall] = []
    made_dead: list[DeadLetter] = []
    expected: list[EncodedCall] = []
    expected_dead: list[DeadLetter] = []
    for change in changes:
        # A fresh mapper each way: nothing cached by one may serve the other.
        calls: list[Call] = []
        Mapper(rulebook, "ns").map(change, calls, expected_dead)
        encode_calls(calls, expected, expected_dead)
        Mapper(rulebook, "ns").map_encoded(change, made, made_dead)

    assert [_encoded(call) for call in made] == [_encoded(c) for c in expected]
    # Within a change, map_encoded tells failures in rule order; map then
    # encode_calls tells encoding failures after the others.
    assert sorted(map(_letter, made_dead)) == sorted(map(_letter, expected_dead))
    # What the comparison covered: every rule made calls, and each kind of failure
    # (a null user id, a call no encoder can write) was met.
    assert {call.rule for call in made} == {
        "identify public.kinds",
        "by_expression",
        "Word Changed",
        "Flagged",
    }
    reasons = " | ".join(letter.reason for letter in made_dead)
    assert "is null or empty" in reasons
    assert "cannot encode" in reasons
    assert any(b"123456789012345678901234" in call.body for call in made)
