"""What becomes a userId: text (trimmed) and numbers (every digit); anything else
is a dead letter that says what the value was, never a Python rendering of it."""

from __future__ import annotations

from pathlib import Path

from cdc_tracker.destination.batching import EncodedCall
from cdc_tracker.mapping.mapper import Mapper
from cdc_tracker.model import DeadLetter
from cdc_tracker.rules.rulebook import load_rulebook
from tests.harness import live_changes

TABLE = """
create table people (
  id bigserial primary key, name text, amount numeric(12,2), doc json,
  tags text[], seen timestamptz, flag boolean)
"""
ROW = (
    "insert into people (name, amount, doc, tags, seen, flag) values ("
    "'  ada  ', 12.50, '{\"a\": 1.10}', '{x,y}', '2026-01-01 00:00+00', true)"
)
COLUMNS = ["name", "amount", "doc", "tags", "seen", "flag"]
RULEBOOK = "version: 1\ntables:\n  public.people:\n    user_id: id\ntrack:\n" + "".join(
    f"  - event: By {column}\n    table: people\n    on: insert\n"
    f"    user_id: {column}\n"
    for column in COLUMNS
)


def test_only_text_and_numbers_make_user_ids(empty_db: str, tmp_path: Path) -> None:
    path = tmp_path / "rulebook.yaml"
    path.write_text(RULEBOOK)
    [change] = live_changes(empty_db, [TABLE, ROW], ["public.people"])
    calls: list[EncodedCall] = []
    dead: list[DeadLetter] = []

    Mapper(load_rulebook(path), "ns").map_encoded(change, calls, dead)

    assert {call.event: call.user_id for call in calls} == {
        "By name": "ada",
        "By amount": "12.50",
    }
    assert {letter.rule: letter.reason for letter in dead} == {
        "By doc": "user_id (doc) is a json object, not text or a number",
        "By tags": "user_id (tags) is an array, not text or a number",
        "By seen": "user_id (seen) is a timestamp, not text or a number",
        "By flag": "user_id (flag) is a boolean, not text or a number",
    }


def test_a_number_past_any_numeric_makes_a_short_user_id(
    empty_db: str, tmp_path: Path
) -> None:
    """Written out in full, 1e999999999999 would fill the memory: past what a
    numeric holds, a number keeps its scientific form."""
    path = tmp_path / "rulebook.yaml"
    path.write_text(
        "version: 1\ntables:\n  public.docs:\n    user_id: doc\n"
        "track:\n  - event: E\n    table: docs\n    on: insert\n"
        "    properties:\n      text: string(doc)\n"
    )
    table = "create table docs (id serial primary key, doc json)"
    row = "insert into docs (doc) values ('1e999999999999')"
    [change] = live_changes(empty_db, [table, row], ["public.docs"])
    calls: list[EncodedCall] = []
    dead: list[DeadLetter] = []

    Mapper(load_rulebook(path), "ns").map_encoded(change, calls, dead)

    assert dead == []
    [call] = calls
    assert call.user_id == "1E+999999999999"
    assert call.payload()["properties"] == {"text": "1E+999999999999"}
