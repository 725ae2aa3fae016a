"""Role checks (REPLICATION, grants, state schema) and the slot check."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from cdc_tracker.daemon.checkpoint import CheckpointStore
from cdc_tracker.deadletters.store import DeadLetterStore
from cdc_tracker.settings import Settings
from cdc_tracker.source.slot import connect
from cdc_tracker.source.stream import Stream
from cdc_tracker.testing.postgres import PostgresServer
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.doctor.helpers import doctor_settings, findings, with_rulebook
from tests.harness import create_slot, running_daemon, slot_in_another_database, sql

_roles = itertools.count(1)


@pytest.fixture
def role(db: str) -> Iterator[str]:
    """A login role with no privileges at all (trust auth: no password)."""
    name = f"doctor_plain_{next(_roles)}"
    sql(db, f"CREATE ROLE {name} LOGIN")
    yield name
    sql(db, f"DROP OWNED BY {name}", f"DROP ROLE {name}")


@pytest.fixture
def settings(db: str, receiver: FakeRudderStack) -> Settings:
    return doctor_settings(db, receiver)


def as_role(settings: Settings, role: str) -> Settings:
    return replace(settings, dsn=make_conninfo(settings.dsn, user=role))


def test_a_role_without_replication_fails_with_the_alter_role(
    settings: Settings, role: str
) -> None:
    found = findings(as_role(settings, role))

    assert found["replication privilege"].status == "fail"
    assert f'ALTER ROLE "{role}" REPLICATION;' in found["replication privilege"].fix
    assert found["wal2json"].status == "warn"
    refused = found["replication connection"]
    assert refused.status == "fail"
    assert "must be superuser or replication role" in refused.detail
    assert "REPLICATION" in refused.fix


def test_missing_select_grants_are_named_with_the_grant_that_fixes_them(
    settings: Settings, db: str, role: str
) -> None:
    sql(db, f"ALTER ROLE {role} REPLICATION", f"GRANT SELECT ON merchants TO {role}")

    found = findings(as_role(settings, role))

    assert found["replication privilege"].status == "pass"
    assert found["wal2json"].status == "pass"
    assert found["replication connection"].status == "pass"
    grants = found["table grants"]
    assert grants.status == "fail"
    assert "public.payouts" in grants.detail
    assert "public.merchants" not in grants.detail
    assert grants.fix == f'GRANT SELECT ON public.payouts TO "{role}";'


def test_a_role_that_cannot_create_the_state_schema_fails(
    settings: Settings, role: str
) -> None:
    state = findings(as_role(settings, role))["state schema"]

    assert state.status == "fail"
    assert "GRANT CREATE ON DATABASE" in state.fix


def test_state_tables_the_role_cannot_write_fail_until_granted(
    settings: Settings, db: str, role: str
) -> None:
    with connect(db) as conn:
        CheckpointStore(conn, settings.slot).ensure_schema()
        DeadLetterStore(conn, settings.slot).ensure_schema()

    before = findings(as_role(settings, role))["state schema"]
    sql(
        db,
        f"GRANT USAGE, CREATE ON SCHEMA cdc_tracker TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA cdc_tracker "
        f"TO {role}",
    )
    after = findings(as_role(settings, role))["state schema"]

    assert before.status == "fail"
    assert "GRANT USAGE, CREATE ON SCHEMA cdc_tracker" in before.fix
    assert after.status == "pass"
    # What the daemon does at start-up works once the doctor passes: the tables,
    # made by another role, are not altered when already up to date.
    with connect(as_role(settings, role).require_dsn()) as conn:
        CheckpointStore(conn, settings.slot).ensure_schema()
        DeadLetterStore(conn, settings.slot).ensure_schema()


def test_the_daemons_slot_passes_once_created(settings: Settings) -> None:
    create_slot(settings)

    slot = findings(settings)["slot"]

    assert slot.status == "pass"
    assert "uses wal2json" in slot.detail


def test_a_slot_of_the_same_name_that_is_not_wal2json_fails(
    settings: Settings, pg: PostgresServer
) -> None:
    pg.execute(f"SELECT pg_create_physical_replication_slot('{settings.slot}')")
    try:
        slot = findings(settings)["slot"]
    finally:
        pg.execute(f"SELECT pg_drop_replication_slot('{settings.slot}')")

    assert slot.status == "fail"
    assert "not wal2json" in slot.detail
    assert "CDC_TRACKER_SLOT" in slot.fix


def test_a_slot_of_another_database_fails(
    settings: Settings, pg: PostgresServer
) -> None:
    with slot_in_another_database(pg.dsn(), settings.slot):
        slot = findings(settings)["slot"]

    assert slot.status == "fail"
    assert "belongs to database postgres" in slot.detail


def test_a_slot_lost_after_shipping_fails_with_the_recovery_to_run(
    settings: Settings, db: str
) -> None:
    """The slot is gone but calls were shipped from it: not 'nothing to do', but
    what the daemon itself would say (recreate, then replay since the checkpoint)."""
    with running_daemon(settings) as daemon:
        sql(db, "insert into merchants (shop_domain) values ('a.example')")
        daemon.caught_up()
    sql(db, f"select pg_drop_replication_slot('{settings.slot}')")

    slot = findings(settings)["slot"]

    assert slot.status == "fail"
    assert "shipped up to commit" in slot.detail
    assert "--recreate-slot" in slot.fix
    assert "replay --since 20" in slot.fix


def test_a_slot_streamed_by_another_reader_fails(settings: Settings, db: str) -> None:
    """The daemon would wait on it for ever, not ready: doctor says why."""
    create_slot(settings)
    other = Stream(settings.dsn, settings.slot, ["public.merchants"], [])
    other.open()
    try:
        slot = findings(settings)["slot"]
    finally:
        other.close()

    assert slot.status == "fail"
    assert "is streamed by another process (server pid" in slot.detail
    assert "pg_terminate_backend(" in slot.fix


def test_a_daemon_streaming_its_slot_passes(settings: Settings, db: str) -> None:
    with running_daemon(settings) as daemon:
        daemon.caught_up()
        slot = findings(settings)["slot"]
    assert slot.status == "pass"


def test_the_readmes_role_passes_every_check(settings: Settings, db: str) -> None:
    """The SQL that README.md gives for the daemon's role, run as written (but for
    the role's and the database's names), leaves nothing for the doctor to fail."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("As a superuser, in the application's database")[1]
    statements = block.split("```sql\n")[1].split("```")[0]
    name = f"readme_tracker_{next(_roles)}"
    database = psycopg.conninfo.conninfo_to_dict(db)["dbname"]
    statements = statements.replace("tracker", name).replace(" app ", f" {database} ")
    sql(db, *[s for s in statements.split(";") if s.strip()])
    try:
        found = findings(as_role(settings, name))
    finally:
        sql(db, f"DROP OWNED BY {name}", f"DROP ROLE {name}")

    failed = {n: f.detail for n, f in found.items() if f.status == "fail"}
    assert failed == {}
    for check in ("replication privilege", "table grants", "state schema"):
        assert found[check].status == "pass", found[check]
    assert found["replication connection"].status == "pass"


SHOP_RULEBOOK = """\
version: 1
tables:
  shop.customers:
    user_id: id
  public.merchants:
    user_id: id
identify:
  - table: shop.customers
    on: insert
    traits: {name: name}
"""


def test_a_schema_the_role_may_not_use_fails_with_the_grant_of_usage(
    settings: Settings, db: str, role: str, tmp_path: Path
) -> None:
    """SELECT alone does not read a table of a schema the role may not use
    (replay and lookups would fail with "permission denied for schema")."""
    sql(
        db,
        "CREATE SCHEMA shop",
        "CREATE TABLE shop.customers (id bigint PRIMARY KEY, name text)",
        f"ALTER ROLE {role} REPLICATION",
        f"GRANT SELECT ON shop.customers, merchants TO {role}",
    )
    mine = with_rulebook(as_role(settings, role), tmp_path / "r.yaml", SHOP_RULEBOOK)

    before = findings(mine)["table grants"]
    sql(db, f"GRANT USAGE ON SCHEMA shop TO {role}")
    after = findings(mine)["table grants"]

    assert before.status == "fail"
    assert before.detail == f"role {role} may not use schema shop"
    assert before.fix == f'GRANT USAGE ON SCHEMA shop TO "{role}";'
    assert after.status == "pass"
    with psycopg.connect(mine.require_dsn()) as conn:  # the fix is all it takes
        assert conn.execute("SELECT count(*) FROM shop.customers").fetchone() == (0,)


def test_missing_usage_and_select_are_fixed_together(
    settings: Settings, db: str, role: str, tmp_path: Path
) -> None:
    sql(
        db,
        "CREATE SCHEMA shop",
        "CREATE TABLE shop.customers (id bigint PRIMARY KEY, name text)",
        f"GRANT SELECT ON merchants TO {role}",
    )
    mine = with_rulebook(as_role(settings, role), tmp_path / "r.yaml", SHOP_RULEBOOK)

    found = findings(mine)["table grants"]

    assert found.status == "fail"
    assert found.detail == (
        f"role {role} may not use schema shop and may not SELECT from shop.customers"
    )
    assert found.fix == (
        f'GRANT USAGE ON SCHEMA shop TO "{role}"; '
        f'GRANT SELECT ON shop.customers TO "{role}";'
    )
