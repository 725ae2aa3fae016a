"""A column a rule reads, absent from an update: gone (a dead letter) or only left
out (an unchanged TOASTed value), under each replica identity, and what ``check``
says of update and delete rules under each.

``people.notes`` holds about 6 kB of random hex: stored out of line (TOAST), yet
small enough for a call. ``email`` has a unique index, the identity of the
``index`` tables; ``keyless`` has no primary key.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import create_slot, running_daemon, settings_for, sql
from tests.rules.test_schema_check import check

IDENTITIES = ["default", "full", "index", "keyless index"]
NOTES = "(select string_agg(md5(random()::text), '') from generate_series(1, 190))"

IDENTIFY = """\
version: 1
tables:
  public.people:
    user_id: id
identify:
  - table: people
    traits:
      name: name
      email: email
"""


def make_people(dsn: str, identity: str) -> None:
    key = "not null" if identity == "keyless index" else "primary key"
    sql(
        dsn,
        f"create table people (id int {key}, email text not null, name text, "
        "notes text)",
        "create unique index people_email on people (email)",
    )
    if identity == "full":
        sql(dsn, "alter table people replica identity full")
    elif identity.endswith("index"):
        sql(dsn, "alter table people replica identity using index people_email")
    sql(dsn, f"insert into people values (1, 'a@x', 'Ada', {NOTES})")


def sent(receiver: FakeRudderStack) -> list[dict[str, Any]]:
    return [call.payload.get("traits") or call.payload for call in receiver.calls]


def reasons(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select reason from cdc_tracker.dead_letters order by id")
        return [str(reason) for (reason,) in rows]


def rulebook(tmp_path: Path, text: str = IDENTIFY) -> Path:
    path = tmp_path / "rulebook.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize(
    "change", ["rename column name to full_name", "drop column name"]
)
def test_a_gone_column_is_a_dead_letter(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path, identity: str, change: str
) -> None:
    make_people(empty_db, identity)
    with running_daemon(settings_for(empty_db, receiver, rulebook(tmp_path))) as d:
        sql(empty_db, "update people set name = 'Ada L.'")
        d.caught_up()
        sql(
            empty_db,
            f"alter table people {change}",
            "update people set email = 'b@x'",  # the identity index's column
            "update people set notes = 'short'",
        )
        d.caught_up()
    assert sent(receiver) == [{"name": "Ada L.", "email": "a@x"}]
    gone = "column 'name' is not in public.people any more (dropped or renamed?)"
    assert reasons(empty_db) == [gone, gone]


@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize("column", ["name", "email"])
def test_an_unchanged_toasted_value_is_left_out(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path, identity: str, column: str
) -> None:
    """Under FULL the old row fills it in; under any other identity it is left
    out (a null would wipe the trait downstream)."""
    make_people(empty_db, identity)
    path = rulebook(tmp_path, IDENTIFY + "      notes: notes\n")
    with running_daemon(settings_for(empty_db, receiver, path)) as daemon:
        sql(empty_db, f"update people set {column} = 'z'")
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 0
    [traits] = sent(receiver)
    assert (len(traits.pop("notes", "")) == 6080) is (identity == "full")
    assert traits == {"name": "Ada", "email": "a@x", column: "z"}


@pytest.mark.parametrize("identity", IDENTITIES)
def test_a_column_added_after_a_waiting_update_is_left_out_of_it(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path, identity: str
) -> None:
    """A column and a rule reading it are added while the daemon lags: the
    updates written before carry no such column (under FULL neither image
    does), and the table has it. Left out, not a dead letter."""
    make_people(empty_db, identity)
    settings = settings_for(empty_db, receiver, rulebook(tmp_path))
    create_slot(settings)
    sql(
        empty_db,
        "update people set name = 'Ada L.'",
        "alter table people add column plan text",
    )
    rulebook(tmp_path, IDENTIFY + "      plan: plan\n")
    with running_daemon(settings) as daemon:
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 0
    assert sent(receiver) == [{"name": "Ada L.", "email": "a@x"}]


def test_under_full_a_rename_soon_after_a_catalog_read_is_still_seen(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """The first rename makes the daemon read the table; the second comes within
    seconds. A whole old row lacking the column makes it read the table again."""
    make_people(empty_db, "full")
    path = rulebook(
        tmp_path,
        "version: 1\ntables:\n  public.people:\n    user_id: id\n"
        "identify:\n  - table: people\n    traits:\n      name: name\n"
        "track:\n  - event: Mail Changed\n    table: people\n    on: update\n"
        "    properties:\n      email: email\n",
    )
    with running_daemon(settings_for(empty_db, receiver, path)) as daemon:
        sql(
            empty_db,
            "alter table people rename column name to full_name",
            "update people set full_name = 'B'",
        )
        daemon.caught_up()
        time.sleep(0.3)
        sql(
            empty_db,
            "alter table people rename column email to mail",
            "update people set full_name = 'C'",
        )
        daemon.caught_up()
    assert [c.payload["properties"] for c in receiver.calls] == [{"email": "a@x"}]
    assert sorted(why.split(" is not")[0] for why in reasons(empty_db)) == [
        "column 'email'",
        "column 'name'",
        "column 'name'",
    ]


UPDATES = IDENTIFY.replace("traits:\n      name: name\n      email: email\n", "")
DELETES = """\
version: 1
tables:
  public.people:
    user_id: {user}
track:
  - event: Person Deleted
    table: people
    on: delete
"""


@pytest.mark.parametrize("identity", ["index", "keyless index"])
def test_an_identity_index_dropped_is_no_identity(
    empty_db: str, tmp_path: Path, identity: str
) -> None:
    """PostgreSQL then logs no old key (the table still says USING INDEX), and
    wal2json skips its updates and deletes."""
    make_people(empty_db, identity)
    sql(empty_db, "drop index people_email")
    assert check(empty_db, tmp_path, UPDATES) == [
        "6: table public.people has REPLICA IDENTITY USING INDEX, and that index "
        "was dropped: PostgreSQL does not decode its updates and deletes; "
        "fix: ALTER TABLE public.people REPLICA IDENTITY FULL;"
    ]


def test_a_delete_rule_may_read_the_identity_index_not_the_primary_key(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    make_people(empty_db, "index")
    assert check(empty_db, tmp_path, DELETES.format(user="id")) == [
        "6: rule 'Person Deleted' reads id of deleted rows, but table public.people "
        "has REPLICA IDENTITY INDEX; fix: ALTER TABLE public.people REPLICA "
        "IDENTITY FULL;"
    ]
    assert check(empty_db, tmp_path, DELETES.format(user="email")) == []
    settings = settings_for(empty_db, receiver, tmp_path / "rulebook.yaml")
    with running_daemon(settings) as daemon:
        sql(empty_db, "delete from people")
        daemon.caught_up()
    assert [(c.event, c.user_id) for c in receiver.calls] == [("Person Deleted", "a@x")]


def partitioned(dsn: str, keyed: bool, *leaves: str) -> None:
    """``parts``, partitioned by region, a leaf per identity in ``leaves``; each
    leaf has a unique index on email (the identity of an ``index`` leaf)."""
    key = ", primary key (id, region)" if keyed else ""
    sql(
        dsn,
        "create table parts (id int not null, region text not null, "
        f"email text not null, name text{key}) partition by list (region)",
    )
    for n, identity in enumerate(leaves):
        leaf = f"parts_{n}"
        sql(
            dsn,
            f"create table {leaf} partition of parts for values in ('r{n}')",
            f"create unique index {leaf}_email on {leaf} (email)",
        )
        if identity == "index":
            sql(dsn, f"alter table {leaf} replica identity using index {leaf}_email")
        elif identity != "default":
            sql(dsn, f"alter table {leaf} replica identity {identity}")


PARTS = """\
version: 1
tables:
  public.parts:
    user_id: {user}
track:
  - event: Part Changed
    table: parts
    on: {action}
"""


@pytest.mark.parametrize(
    ("table", "rule", "refused"),
    [
        # Every leaf's old image carries email: updates and deletes by email.
        ((False, "index", "index"), ("email", "update"), None),
        ((False, "index", "full"), ("email", "delete"), None),
        # A leaf logs no old key: its updates would be lost. The fix names it.
        (
            (True, "full", "nothing"),
            ("id", "update"),
            "has partitions without an old key (public.parts_1): PostgreSQL does "
            "not decode its updates and deletes; fix: ALTER TABLE public.parts_1 "
            "REPLICA IDENTITY FULL;",
        ),
        # One leaf's old image holds email, the other's its key: updates decode
        # on both, a delete rule may read neither.
        ((True, "index", "default"), ("id", "update"), None),
        ((True, "index", "default"), ("id", "delete"), "reads id of deleted rows"),
        # The index leaf's old image lacks the key and the name.
        ((True, "full", "index"), ("name", "delete"), "reads name of deleted rows"),
        ((True, "index"), ("id", "delete"), "reads id of deleted rows"),
    ],
)
def test_a_partitioned_tables_old_key_is_what_every_leaf_carries(
    empty_db: str,
    tmp_path: Path,
    table: tuple[Any, ...],
    rule: tuple[str, str],
    refused: str | None,
) -> None:
    keyed, *leaves = table
    partitioned(empty_db, keyed, *leaves)
    user, action = rule
    found = check(empty_db, tmp_path, PARTS.format(user=user, action=action))
    if refused is None:
        assert found == []
    else:
        [problem] = found
        assert refused in problem


def test_an_indexs_included_columns_are_not_in_the_old_key(
    empty_db: str, tmp_path: Path
) -> None:
    """PostgreSQL logs an index's key columns as the old key, not its INCLUDE
    ones."""
    sql(
        empty_db,
        "create table people (id int, email text not null, name text, "
        "primary key (id) include (email))",
        "create unique index people_email on people (email) include (name)",
    )
    deleted = DELETES.format(user="email")
    assert check(empty_db, tmp_path, deleted) == [
        "6: rule 'Person Deleted' reads email of deleted rows, but table "
        "public.people has REPLICA IDENTITY DEFAULT; fix: ALTER TABLE "
        "public.people REPLICA IDENTITY FULL;"
    ]
    sql(empty_db, "alter table people replica identity using index people_email")
    assert check(empty_db, tmp_path, deleted) == []
    named = DELETES.format(user="name")
    assert "reads name of deleted rows" in check(empty_db, tmp_path, named)[0]


def test_a_fix_names_the_partitions_lacking_what_the_rule_reads(
    empty_db: str, tmp_path: Path
) -> None:
    partitioned(empty_db, True, "default", "index")
    sql(
        empty_db,
        "create table \"P-2\" partition of parts for values in ('r9')",
        'alter table "P-2" replica identity nothing',
    )

    def fix(user: str, action: str) -> str:
        [problem] = check(empty_db, tmp_path, PARTS.format(user=user, action=action))
        return problem.split("fix: ")[1]

    # parts_0 (its primary key) carries id, parts_1 (its index) carries email.
    assert fix("id", "update") == 'ALTER TABLE public."P-2" REPLICA IDENTITY FULL;'
    sql(empty_db, 'alter table "P-2" replica identity full')
    assert fix("id", "delete") == "ALTER TABLE public.parts_1 REPLICA IDENTITY FULL;"
    assert fix("email", "delete") == (
        "ALTER TABLE public.parts_0 REPLICA IDENTITY FULL;"
    )


def test_a_partitioned_table_without_partitions_is_judged_by_its_own_key(
    empty_db: str, tmp_path: Path
) -> None:
    sql(
        empty_db,
        "create table parts (id int not null, region text not null, "
        "email text not null, name text) partition by list (region)",
    )
    assert check(empty_db, tmp_path, PARTS.format(user="id", action="update")) == [
        "6: table public.parts has no primary key and REPLICA IDENTITY DEFAULT: "
        "PostgreSQL does not decode its updates and deletes; "
        "fix: ALTER TABLE public.parts REPLICA IDENTITY FULL;"
    ]


def test_on_a_delete_new_is_null_as_old_is_on_an_insert(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    make_people(db, "full")
    path = rulebook(
        tmp_path,
        "version: 1\ntables:\n  public.people:\n    user_id: id\ntrack:\n"
        "  - event: Left\n    table: people\n    on: delete\n"
        "    when: new.name is null and (new.name == 'x' or old.name == 'Ada')\n"
        "    properties:\n      gone: new.name\n      was: old.name\n"
        "      name: name\n",
    )
    with running_daemon(settings_for(db, receiver, path)) as daemon:
        sql(db, "delete from people where id = 1")
        daemon.caught_up()
        assert daemon.daemon.counters.dead_letters == 0
    assert [call.payload["properties"] for call in receiver.calls] == [
        {"gone": None, "was": "Ada", "name": "Ada"}
    ]
