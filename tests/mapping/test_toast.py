"""Unchanged TOASTed values: missing from the change, so unknown, never null.

``notes`` holds 100 kB of random hex, too large to stay inline and too random to
compress back in line, so PostgreSQL stores it out of line (TOAST). An update that
leaves it alone does not carry it: wal2json leaves the column out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import create_slot, running_daemon, settings_for, sql

BIG_NOTES = "(select string_agg(md5(random()::text), '') from generate_series(1, 3200))"

TABLES = """\
version: 1
tables:
  public.people:
    user_id: id
"""

# 100 kB is over the 32 kB a call may carry: the tests that need the value to
# arrive send its hash instead.
RULEBOOK = (
    TABLES
    + """\
identify:
  - table: people
    traits:
      name: name
      notes: notes
"""
)

HASHED = (
    TABLES
    + """\
identify:
  - table: people
    traits:
      name: name
      notes_sha: sha256(notes)
"""
)

GATED = (
    TABLES
    + """\
identify:
  - table: people
    traits:
      name: name
track:
  - event: Notes Present
    table: people
    on: update
    when: notes is not null
"""
)

SHA256_SQL = "select encode(sha256(convert_to(notes, 'UTF8')), 'hex') from people"


def make_people(dsn: str, *, full: bool) -> None:
    """Create the table and one row whose notes are stored out of line."""
    sql(dsn, "create table people (id int primary key, name text, notes text)")
    if full:
        sql(dsn, "alter table people replica identity full")
    sql(dsn, f"insert into people values (1, 'Ada', {BIG_NOTES})")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select notes, pg_column_size(notes), "
            "(select reltoastrelid from pg_class where relname = 'people') "
            "from people"
        ).fetchone()
    assert row is not None
    notes, stored_size, toast_table = row
    assert len(notes) == 102_400
    # Stored out of line: a big stored size, in a table with a TOAST relation.
    assert stored_size > 8_000
    assert toast_table != 0


def notes_sha(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(SHA256_SQL).fetchone()
    assert row is not None
    return str(row[0])


def write_rulebook(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rulebook.yaml"
    path.write_text(text)
    return path


def identify_traits(receiver: FakeRudderStack) -> list[dict[str, Any]]:
    assert set(receiver.statuses()) == {200}
    return [
        call.payload["traits"] for call in receiver.calls if call.type == "identify"
    ]


def test_unchanged_toasted_value_is_left_out_not_sent_as_null(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """Default identity: the trait is absent (a null would wipe it downstream)."""
    make_people(empty_db, full=False)
    rulebook = write_rulebook(tmp_path, RULEBOOK)
    with running_daemon(settings_for(empty_db, receiver, rulebook)) as daemon:
        sql(empty_db, "update people set name = 'Ada L.'")
        daemon.caught_up()
    [traits] = identify_traits(receiver)
    assert traits == {"name": "Ada L."}
    assert "notes" not in receiver.calls[0].payload["context"]["traits"]


def test_toasted_value_set_to_null_is_sent_as_null(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    make_people(empty_db, full=False)
    rulebook = write_rulebook(tmp_path, RULEBOOK)
    with running_daemon(settings_for(empty_db, receiver, rulebook)) as daemon:
        sql(empty_db, "update people set notes = null")
        daemon.caught_up()
    [traits] = identify_traits(receiver)
    assert traits == {"name": "Ada", "notes": None}


def test_toasted_value_that_changes_is_sent_whole(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    make_people(empty_db, full=False)
    rulebook = write_rulebook(tmp_path, HASHED)
    with running_daemon(settings_for(empty_db, receiver, rulebook)) as daemon:
        sql(empty_db, f"update people set notes = {BIG_NOTES}")
        daemon.caught_up()
    [traits] = identify_traits(receiver)
    assert traits == {"name": "Ada", "notes_sha": notes_sha(empty_db)}


INDEX_IDENTITY = [
    "alter table people alter column name set not null",
    "create unique index people_name on people (name)",
    "alter table people replica identity using index people_name",
]


@pytest.mark.parametrize(
    ("before", "after"),
    [([], ["alter table people replica identity full"]), (INDEX_IDENTITY, [])],
    ids=["switched to full while the update waits", "identity using an index"],
)
def test_an_old_image_without_the_value_still_leaves_it_out(
    empty_db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    before: list[str],
    after: list[str],
) -> None:
    """The update's old image holds only the replica identity it was written with:
    the key (the table is switched to FULL afterwards, as the README says to do for
    old.x rules), or an index's columns. The missing value is still TOAST, not a
    gone column."""
    make_people(empty_db, full=False)
    sql(empty_db, *before)
    rulebook = write_rulebook(tmp_path, RULEBOOK)
    settings = settings_for(empty_db, receiver, rulebook)
    create_slot(settings)
    sql(empty_db, "update people set name = 'Ada L.'", *after)
    with running_daemon(settings) as daemon:
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 0
    [traits] = identify_traits(receiver)
    assert traits == {"name": "Ada L."}


def test_full_identity_fills_the_unchanged_value_from_the_old_row(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    make_people(empty_db, full=True)
    rulebook = write_rulebook(tmp_path, HASHED)
    with running_daemon(settings_for(empty_db, receiver, rulebook)) as daemon:
        sql(empty_db, "update people set name = 'Ada L.'")
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 0
    [traits] = identify_traits(receiver)
    assert traits == {"name": "Ada L.", "notes_sha": notes_sha(empty_db)}


@pytest.mark.parametrize("full", [False, True], ids=["default", "full"])
def test_rule_needing_the_missing_value_is_dead_lettered_and_the_pipeline_goes_on(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path, full: bool
) -> None:
    """``when: notes is not null`` cannot be decided without the value.

    Default identity: a dead letter naming the column, the identify still goes, and
    later changes flow. FULL identity: the old value decides, nothing is dropped.
    """
    make_people(empty_db, full=full)
    rulebook = write_rulebook(tmp_path, GATED)
    with running_daemon(settings_for(empty_db, receiver, rulebook)) as daemon:
        sql(empty_db, "update people set name = 'Ada L.'")
        sql(empty_db, "update people set notes = 'short'")
        daemon.caught_up()
        dead = daemon.daemon.counters.dead_letters
    events = [call.event or call.type for call in receiver.calls]
    with psycopg.connect(empty_db) as conn:
        letters = conn.execute(
            "select table_name, rule, reason, change->'new' ? 'notes' "
            "from cdc_tracker.dead_letters order by id"
        ).fetchall()
    if full:
        assert dead == 0
        assert letters == []
        assert events == ["identify", "Notes Present", "identify", "Notes Present"]
        return
    assert dead == 1
    assert events == ["identify", "identify", "Notes Present"]
    [(table, rule, reason, has_notes)] = letters
    assert (table, rule, has_notes) == ("public.people", "Notes Present", False)
    assert reason.startswith(
        "column 'notes' is not in the change (an unchanged TOASTed value)"
    )
