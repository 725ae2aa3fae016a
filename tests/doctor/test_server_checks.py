"""Server checks: version, wal_level, wal2json, slot and sender headroom, WAL limit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from cdc_tracker.ops.doctor import exit_code, run_doctor
from cdc_tracker.ops.doctor import server as server_checks
from cdc_tracker.settings import Settings
from cdc_tracker.testing.postgres import PostgresServer, ThrowawayPostgres
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.doctor.helpers import doctor_settings, findings
from tests.harness import EXAMPLES


@pytest.fixture(scope="module")
def replica_server() -> Iterator[ThrowawayPostgres]:
    """A server that cannot decode (wal_level=replica) and has one slot, taken."""
    server = ThrowawayPostgres(
        settings={
            "wal_level": "replica",
            "max_replication_slots": "1",
            "max_slot_wal_keep_size": "1GB",
        }
    )
    with server:
        server.create_database("app")
        server.execute((EXAMPLES / "schema.sql").read_text(), "app")
        server.execute("SELECT pg_create_physical_replication_slot('standby_a')")
        yield server


@pytest.fixture
def on_replica_server(
    replica_server: ThrowawayPostgres, receiver: FakeRudderStack
) -> Settings:
    return doctor_settings(replica_server.dsn("app"), receiver)


def test_a_healthy_database_passes_all_but_the_expected_warning(
    db: str, receiver: FakeRudderStack
) -> None:
    found = findings(doctor_settings(db, receiver))

    warnings = {name for name, finding in found.items() if finding.status != "pass"}
    assert warnings == {"max_slot_wal_keep_size"}
    # No slot yet is a first set-up: nothing to do, so no warning.
    assert "does not exist yet: 'cdc-tracker run' creates it" in found["slot"].detail
    assert found["server version"].detail.startswith("PostgreSQL 15")
    assert exit_code(list(found.values())) == 1


def test_wal_level_replica_fails_with_the_setting_to_change(
    on_replica_server: Settings,
) -> None:
    found = findings(on_replica_server)

    assert found["wal_level"].status == "fail"
    assert "wal_level is replica" in found["wal_level"].detail
    assert "ALTER SYSTEM SET wal_level = logical" in found["wal_level"].fix
    assert exit_code(list(found.values())) == 2


def test_wal2json_cannot_be_verified_on_a_server_that_cannot_decode(
    on_replica_server: Settings,
) -> None:
    found = findings(on_replica_server)

    assert found["wal2json"].status == "warn"
    assert found["wal2json"].detail.startswith("not verified")


def test_a_server_without_the_plugin_fails_with_the_package_for_its_version(
    db: str, receiver: FakeRudderStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_checks, "PLUGIN", "cdc_tracker_no_such_plugin")
    with psycopg.connect(db) as conn:
        major = conn.info.server_version // 10_000

    plugin = findings(doctor_settings(db, receiver))["wal2json"]

    assert plugin.status == "fail"
    assert plugin.detail.startswith("the plugin is not installed: could not access")
    assert plugin.fix == (
        f"install wal2json 2.x for this server (Debian: postgresql-{major}-wal2json)"
    )


def test_no_free_replication_slot_fails_and_names_the_unused_ones(
    on_replica_server: Settings,
) -> None:
    headroom = findings(on_replica_server)["replication slots"]

    assert headroom.status == "fail"
    assert "1 of max_replication_slots 1 in use" in headroom.detail
    assert "max_replication_slots = 3" in headroom.fix
    assert "standby_a" in headroom.fix


def test_a_bounded_slot_wal_size_passes(on_replica_server: Settings) -> None:
    keep = findings(on_replica_server)["max_slot_wal_keep_size"]

    assert (keep.status, keep.detail) == ("pass", "1GB")


def test_unlimited_slot_wal_warns_with_a_limit_to_set(
    db: str, receiver: FakeRudderStack
) -> None:
    keep = findings(doctor_settings(db, receiver))["max_slot_wal_keep_size"]

    assert keep.status == "warn"
    assert "unlimited" in keep.detail
    assert "ALTER SYSTEM SET max_slot_wal_keep_size" in keep.fix


def test_a_server_without_wal2json_fails_the_plugin_check(
    db: str, receiver: FakeRudderStack
) -> None:
    # The plugin is looked up along dynamic_library_path: point it at nothing.
    hidden = db + " options='-c dynamic_library_path=/nonexistent'"
    settings = doctor_settings(db, receiver)

    plugin = findings(replace(settings, dsn=hidden))["wal2json"]

    assert plugin.status == "fail"
    assert "not installed" in plugin.detail
    assert "wal2json" in plugin.fix


def test_the_plugin_probe_leaves_no_slot_behind(
    db: str, receiver: FakeRudderStack, pg: PostgresServer
) -> None:
    run_doctor(doctor_settings(db, receiver))

    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_replication_slots "
            "WHERE slot_name LIKE 'cdc_tracker_doctor_%'"
        ).fetchone()
    assert left == (0,)


def test_an_unreachable_database_fails_once_and_skips_the_rest(
    receiver: FakeRudderStack,
) -> None:
    settings = doctor_settings("host=127.0.0.1 port=1 dbname=app", receiver)

    found = findings(settings)

    assert found["database"].status == "fail"
    assert found["wal_level"].status == "warn"
    assert found["wal_level"].detail == "not checked: no database connection"
    assert found["write key"].status == "pass"
