"""Checking a rulebook against the live catalog: tables, columns, types, identity."""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

import psycopg
import pytest
from structlog.testing import capture_logs

from cdc_tracker.rules.rulebook import Rulebook, load_rulebook
from cdc_tracker.rules.schema import check_schema, toast_risks
from cdc_tracker.source.catalog import read_catalog
from cdc_tracker.source.slot import connect
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import running_daemon, settings_for, sql

TABLES = """\
version: 1
tables:
  public.merchants:
    user_id: id
    cursor: updated_at
  public.payouts:
    user_id: merchant_id
    cursor: created_at
"""


def check(dsn: str, tmp_path: Path, text: str) -> list[str]:
    """The problems as ``line: message``, checked against the database at ``dsn``."""
    path = tmp_path / "rulebook.yaml"
    path.write_text(textwrap.dedent(text))
    rulebook = load_rulebook(path)
    with connect(dsn) as conn:
        catalog = read_catalog(conn, sorted(rulebook.tables))
    found = check_schema(rulebook, catalog)
    assert all(file == str(path) for file, _, _ in found)
    return [f"{line}: {message}" for _, line, message in found]


def test_example_rulebook_fits_the_example_schema(
    db: str, example_rulebook: Path
) -> None:
    rulebook = load_rulebook(example_rulebook)
    with connect(db) as conn:
        catalog = read_catalog(conn, sorted(rulebook.tables))
    assert check_schema(rulebook, catalog) == []


def test_catalog_reports_key_identity_and_declared_types(db: str) -> None:
    """Domains read as their base type; the key is the primary key's columns."""
    sql(
        db,
        "create domain money2 as numeric(12,2)",
        "create table typed (a int, b int, amount money2, tags text[], "
        "primary key (b, a))",
    )
    with psycopg.connect(db) as conn:
        catalog = read_catalog(conn, ["public.typed", "public.merchants", "public.x"])
    assert sorted(catalog) == ["public.merchants", "public.typed"]
    typed = catalog["public.typed"]
    assert typed.columns == {
        "a": "integer",
        "b": "integer",
        "amount": "numeric(12,2)",
        "tags": "text[]",
    }
    assert sorted(typed.key) == ["a", "b"]
    assert typed.replica_identity == "default"
    assert catalog["public.merchants"].full_identity


def test_unknown_table_is_named_at_its_line(empty_db: str, tmp_path: Path) -> None:
    assert check(empty_db, tmp_path, TABLES) == [
        "3: table 'public.merchants' does not exist",
        "6: table 'public.payouts' does not exist",
    ]


def test_unknown_column_suggests_the_closest_name(db: str, tmp_path: Path) -> None:
    found = check(
        db,
        tmp_path,
        TABLES
        + "identify:\n  - table: merchants\n    traits:\n      name: ownr_name\n",
    )
    assert found == [
        "12: traits.name: unknown column 'ownr_name' at column 1; did you mean "
        "'owner_name'? (table public.merchants)"
    ]


def test_unknown_column_in_when_points_at_the_when_line(
    db: str, tmp_path: Path
) -> None:
    found = check(
        db,
        tmp_path,
        TABLES + "track:\n  - event: E\n    table: payouts\n    on: insert\n"
        "    when: stauts == 'paid'\n",
    )
    assert len(found) == 1
    assert found[0].startswith(
        "13: when: unknown column 'stauts' at column 1; did you mean 'status'?"
    )


def test_text_function_on_a_number_is_a_type_error(db: str, tmp_path: Path) -> None:
    found = check(
        db,
        tmp_path,
        TABLES + "track:\n  - event: E\n    table: payouts\n    on: insert\n"
        "    properties:\n      amount: lower(amount)\n",
    )
    assert len(found) == 1
    assert found[0].startswith("14: properties.amount: lower() expects text, got ")
    assert "(table public.payouts)" in found[0]


def test_comparing_a_number_with_text_is_a_type_error(db: str, tmp_path: Path) -> None:
    found = check(
        db,
        tmp_path,
        TABLES + "track:\n  - event: E\n    table: payouts\n    on: insert\n"
        "    when: amount == 'ten'\n",
    )
    assert len(found) == 1
    assert found[0].startswith("13: when: '==' cannot compare ")


def test_when_that_is_not_a_boolean_is_refused(db: str, tmp_path: Path) -> None:
    """``when: amount`` would never hold (only true fires): refuse it up front."""
    found = check(
        db,
        tmp_path,
        TABLES + "track:\n  - event: E\n    table: payouts\n    on: insert\n"
        "    when: amount\n",
    )
    assert len(found) == 1
    assert found[0].startswith("13: when: 'when' expects a boolean, got ")


def test_old_values_on_a_default_identity_table_need_replica_identity_full(
    db: str, tmp_path: Path
) -> None:
    """old.x and changed() read the old row, which only FULL identity carries."""
    found = check(
        db,
        tmp_path,
        TABLES
        + """\
track:
  - event: Status Changed
    table: payouts
    on: update
    when: changed(status)
  - event: Amount Lowered
    table: payouts
    on: update
    when: new.amount < old.amount
""",
    )
    fix = "fix: ALTER TABLE public.payouts REPLICA IDENTITY FULL;"
    assert found == [
        "10: rule 'Status Changed' reads old values, but table public.payouts has "
        f"REPLICA IDENTITY DEFAULT; {fix}",
        "14: rule 'Amount Lowered' reads old values, but table public.payouts has "
        f"REPLICA IDENTITY DEFAULT; {fix}",
    ]


def test_old_values_on_a_full_identity_table_are_accepted(
    db: str, tmp_path: Path
) -> None:
    found = check(
        db,
        tmp_path,
        TABLES + "track:\n  - event: E\n    table: merchants\n    on: update\n"
        "    when: changed(email)\n",
    )
    assert found == []


def test_an_insert_rule_may_read_old_values_whatever_the_identity(
    db: str, tmp_path: Path
) -> None:
    """On an insert old.x is null: no replica identity gives it another value."""
    found = check(
        db,
        tmp_path,
        TABLES + "track:\n  - event: E\n    table: payouts\n    on: insert\n"
        "    when: changed(status)\n    properties:\n      was: old.status\n",
    )
    assert found == []


def test_delete_rule_reading_non_key_columns_needs_full_identity(
    db: str, tmp_path: Path
) -> None:
    """A delete carries only the key unless FULL: user_id and amount are unknown."""
    found = check(
        db,
        tmp_path,
        TABLES
        + "track:\n  - event: Payout Deleted\n    table: payouts\n    on: delete\n"
        "    properties:\n      amount: amount\n      id: id\n",
    )
    assert found == [
        "10: rule 'Payout Deleted' reads amount, merchant_id of deleted rows, but "
        "table public.payouts has REPLICA IDENTITY DEFAULT; "
        "fix: ALTER TABLE public.payouts REPLICA IDENTITY FULL;"
    ]


def test_delete_rule_reading_only_the_key_is_accepted(db: str, tmp_path: Path) -> None:
    found = check(
        db,
        tmp_path,
        TABLES
        + "track:\n  - event: Payout Deleted\n    table: payouts\n    on: delete\n"
        "    user_id: id\n    properties:\n      id: id\n",
    )
    assert found == []


def test_table_without_primary_key_refuses_update_rules(
    empty_db: str, tmp_path: Path
) -> None:
    """Without a key (or with a deferrable one) PostgreSQL drops updates and deletes."""
    sql(
        empty_db,
        "create table events (user_id text, kind text)",
        "create table deferred (id int primary key deferrable, kind text)",
    )
    found = check(
        empty_db,
        tmp_path,
        """\
        version: 1
        tables:
          events:
            user_id: user_id
          deferred:
            user_id: id
        track:
          - event: Event Added
            table: events
            on: insert
          - event: Event Changed
            table: events
            on: [insert, update]
          - event: Deferred Changed
            table: deferred
            on: delete
        """,
    )
    assert found == [
        "11: table public.events has no primary key and REPLICA IDENTITY DEFAULT: "
        "PostgreSQL does not decode its updates and deletes; "
        "fix: ALTER TABLE public.events REPLICA IDENTITY FULL;",
        "14: table public.deferred has no primary key and REPLICA IDENTITY DEFAULT: "
        "PostgreSQL does not decode its updates and deletes; "
        "fix: ALTER TABLE public.deferred REPLICA IDENTITY FULL;",
    ]


def test_table_without_key_but_full_identity_is_accepted(
    empty_db: str, tmp_path: Path
) -> None:
    sql(
        empty_db,
        "create table events (user_id text, kind text)",
        "alter table events replica identity full",
    )
    found = check(
        empty_db,
        tmp_path,
        "version: 1\ntables:\n  events:\n    user_id: user_id\n"
        "track:\n  - event: E\n    table: events\n    on: [update, delete]\n"
        "    when: changed(kind)\n",
    )
    assert found == []


def test_table_without_key_but_an_identity_index_is_accepted_for_updates(
    empty_db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """PostgreSQL logs the index's columns as the old key: updates decode, and
    the daemon makes their calls."""
    sql(
        empty_db,
        "create table events (user_id text not null, kind text)",
        "create unique index events_user on events (user_id)",
        "alter table events replica identity using index events_user",
    )
    rulebook = (
        "version: 1\ntables:\n  events:\n    user_id: user_id\n"
        "track:\n  - event: E\n    table: events\n    on: update\n"
        "    properties:\n      kind: kind\n"
    )
    assert check(empty_db, tmp_path, rulebook) == []
    settings = settings_for(empty_db, receiver, tmp_path / "rulebook.yaml")
    with running_daemon(settings) as daemon:
        sql(
            empty_db,
            "insert into events values ('u1', 'a')",
            "update events set kind = 'b'",
        )
        daemon.caught_up()
    assert [(c.user_id, c.payload["properties"]) for c in receiver.calls] == [
        ("u1", {"kind": "b"})
    ]


def test_missing_cursor_column_and_user_id_column_are_named(
    db: str, tmp_path: Path
) -> None:
    found = check(
        db,
        tmp_path,
        TABLES.replace("cursor: updated_at", "cursor: modified_at").replace(
            "user_id: merchant_id", "user_id: merchant"
        ),
    )
    assert found == [
        "5: cursor column 'modified_at' is not in public.merchants",
        # At the user_id's own line, once (the rules inherit it, unchecked).
        "7: user_id: unknown column 'merchant' at column 1; did you mean "
        "'merchant_id'? (table public.payouts)",
    ]


def test_a_partitioned_table_is_described_by_its_leaves(empty_db: str) -> None:
    """The leaves wal2json names, and the weakest replica identity among them."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "create table events (id bigint, at date, primary key (id, at)) "
            "partition by range (at)"
        )
        for year in (2025, 2026):
            conn.execute(
                f"create table events_{year} partition of events "
                f"for values from ('{year}-01-01') to ('{year + 1}-01-01')"
            )
        conn.execute("alter table events_2025 replica identity full")
    rulebook = _partition_rulebook()
    with connect(empty_db) as conn:
        catalog = read_catalog(conn, ["public.events"])
    info = catalog["public.events"]
    assert info.leaves == ("public.events_2025", "public.events_2026")
    assert info.replica_identity == "default"
    assert check_schema(rulebook, catalog) == []
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("alter table events_2026 replica identity full")
    with connect(empty_db) as conn:
        assert read_catalog(conn, ["public.events"])["public.events"].full_identity


def _partition_rulebook() -> Rulebook:
    path = Path(tempfile.mkdtemp()) / "rulebook.yaml"
    path.write_text("version: 1\ntables:\n  public.events:\n    user_id: id\n")
    return load_rulebook(path)


def test_toast_risks_name_large_columns_update_rules_read_without_full_identity(
    empty_db: str,
) -> None:
    """Only update rules on non-FULL tables, only columns that can be TOASTed."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "create table notes (id bigint primary key, body text, tags text[], "
            "n integer, meta jsonb)"
        )
        conn.execute("create table kept (id bigint primary key, body text)")
        conn.execute("alter table kept replica identity full")
    path = Path(tempfile.mkdtemp()) / "rulebook.yaml"
    path.write_text(
        "version: 1\n"
        "tables:\n  public.notes:\n    user_id: id\n  public.kept:\n    user_id: id\n"
        "identify:\n"
        "  - table: public.notes\n    on: update\n"
        "    traits: {body: body, tags: tags, n: n}\n"
        "  - table: public.notes\n    on: insert\n    traits: {meta: meta}\n"
        "  - table: public.kept\n    on: update\n    traits: {body: body}\n"
    )
    rulebook = load_rulebook(path)
    with connect(empty_db) as conn:
        catalog = read_catalog(conn, ["public.notes", "public.kept"])
    assert toast_risks(rulebook, catalog) == {"public.notes": ["body", "tags"]}


def _partitioned_with_one_partition_full(dsn: str, tmp_path: Path) -> Path:
    """``pt`` FULL, ``pt_us`` FULL, ``pt_eu`` not; a rulebook of an update rule
    reading ``body``."""
    sql(
        dsn,
        "create table pt (id int, region text, body text, primary key (id, region))"
        " partition by list (region)",
        "create table pt_eu partition of pt for values in ('eu')",
        "create table pt_us partition of pt for values in ('us')",
        "alter table pt replica identity full",
        "alter table pt_us replica identity full",
    )
    path = tmp_path / "rulebook.yaml"
    path.write_text(
        "version: 1\ntables:\n  public.pt:\n    user_id: id\n"
        "identify:\n  - table: public.pt\n    on: update\n    traits: {body: body}\n"
    )
    return path


def test_toast_risks_of_a_partitioned_table_are_its_partitions_without_full(
    empty_db: str, tmp_path: Path
) -> None:
    """FULL on a partitioned table does not reach its partitions: the risk stays
    until each partition has it, and the fix names those that lack it."""
    rulebook = load_rulebook(_partitioned_with_one_partition_full(empty_db, tmp_path))
    with connect(empty_db) as conn:
        info = read_catalog(conn, ["public.pt"])["public.pt"]
    assert toast_risks(rulebook, {"public.pt": info}) == {"public.pt": ["body"]}
    assert info.lacking(info.columns) == ["public.pt_eu"]
    sql(empty_db, "alter table pt_eu replica identity full")
    with connect(empty_db) as conn:
        info = read_catalog(conn, ["public.pt"])["public.pt"]
    assert toast_risks(rulebook, {"public.pt": info}) == {}


def test_the_daemon_names_the_partitions_to_give_full_in_its_warning(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    rulebook = _partitioned_with_one_partition_full(db, tmp_path)
    with capture_logs() as logs, running_daemon(settings_for(db, receiver, rulebook)):
        pass
    [warning] = [
        e for e in logs if e["event"] == "large values may be left out of update calls"
    ]
    assert warning["hint"] == (
        "keep them with ALTER TABLE public.pt_eu REPLICA IDENTITY FULL;"
    )


@pytest.mark.parametrize(
    ("user_id", "kind"),
    [
        ("last_payout_fetch", "timestamp"),
        ("can_backdate", "boolean"),
        ("email is null", "boolean"),
    ],
)
def test_a_user_id_that_is_not_text_or_a_number_is_refused(
    db: str, tmp_path: Path, user_id: str, kind: str
) -> None:
    """It would be sent as some rendering of the value; ``string()`` says which."""
    found = check(
        db,
        tmp_path,
        TABLES + "track:\n  - event: E\n    table: merchants\n    on: insert\n"
        f"    user_id: {user_id}\n",
    )
    assert found == [
        f"13: user_id ({user_id}) is {kind}: a userId is text or a number; fix: "
        "string(...) of it, if that is really the user's id (table public.merchants)"
    ]
    assert (
        check(
            db,
            tmp_path,
            TABLES + "track:\n  - event: E\n    table: merchants\n    on: insert\n"
            f"    user_id: string({user_id})\n",
        )
        == []
    )


def test_a_table_user_id_of_the_wrong_kind_is_told_once_at_its_line(
    db: str, tmp_path: Path
) -> None:
    text = TABLES.replace("user_id: id", "user_id: can_backdate") + (
        "track:\n  - event: A\n    table: merchants\n    on: insert\n"
        "  - event: B\n    table: merchants\n    on: insert\n"
    )
    found = check(db, tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith("4: user_id (can_backdate) is boolean")
