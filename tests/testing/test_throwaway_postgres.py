"""The throwaway PostgreSQL server: wal2json works, data survives restarts, it binds
loopback only, and it runs as ``postgres`` when we are root."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cdc_tracker.errors import ConfigError, SourceError
from cdc_tracker.testing import postgres, postgres_docker
from cdc_tracker.testing.postgres import ThrowawayPostgres, start_postgres

PEEK = (
    "SELECT data FROM pg_logical_slot_peek_changes('s', NULL, NULL,"
    " 'format-version', '2', 'include-transaction', 'true', 'include-types', 'true',"
    " 'include-timestamp', 'true', 'include-lsn', 'true', 'include-pk', 'true')"
)


@pytest.fixture(scope="module")
def server() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as pg:
        yield pg


def fetch(
    pg: ThrowawayPostgres, query: str, dbname: str = "postgres"
) -> list[tuple[object, ...]]:
    with psycopg.connect(pg.dsn(dbname), autocommit=True) as conn:
        return conn.execute(query).fetchall()


def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on ``port``, read from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_wal2json_streams_an_insert_with_its_type(server: ThrowawayPostgres) -> None:
    server.create_database("w2j")
    server.execute("CREATE TABLE items (id int PRIMARY KEY, name text)", "w2j")
    server.execute("SELECT pg_create_logical_replication_slot('s', 'wal2json')", "w2j")
    server.execute("INSERT INTO items VALUES (7, 'seven')", "w2j")

    rows = [json.loads(data) for (data,) in fetch(server, PEEK, "w2j")]

    assert [row["action"] for row in rows] == ["B", "I", "C"]
    insert = rows[1]
    assert insert["table"] == "items"
    assert insert["columns"] == [
        {"name": "id", "type": "integer", "value": 7},
        {"name": "name", "type": "text", "value": "seven"},
    ]
    assert insert["pk"] == [{"name": "id", "type": "integer"}]
    assert "timestamp" in rows[0]
    assert "nextlsn" in rows[2]


def test_server_is_configured_for_logical_decoding(server: ThrowawayPostgres) -> None:
    names = "'wal_level','max_replication_slots','max_wal_senders','fsync'"
    settings = dict(
        fetch(server, f"SELECT name, setting FROM pg_settings WHERE name IN ({names})")
    )

    assert settings == {
        "wal_level": "logical",
        "max_replication_slots": "20",
        "max_wal_senders": "20",
        "fsync": "off",
    }


def test_server_listens_on_loopback_only(server: ThrowawayPostgres) -> None:
    (address,) = fetch(server, "SELECT host(inet_server_addr())")[0]

    assert server.host == "127.0.0.1"
    assert address == "127.0.0.1"
    assert listening_addresses(server.port) == {"0100007F"}


def test_dsn_and_url_name_the_loopback_server(server: ThrowawayPostgres) -> None:
    assert server.dsn("app") == (
        f"host=127.0.0.1 port={server.port} user=cdc dbname=app"
    )
    assert server.url("app") == f"postgresql://cdc@127.0.0.1:{server.port}/app"
    with psycopg.connect(server.url()) as conn:
        assert conn.info.user == "cdc"


def test_create_database_drops_the_previous_one_and_its_slots(
    server: ThrowawayPostgres,
) -> None:
    server.create_database("again")
    server.execute("CREATE TABLE leftover (id int PRIMARY KEY)", "again")
    server.execute(
        "SELECT pg_create_logical_replication_slot('again_slot', 'wal2json')", "again"
    )

    dsn = server.create_database("again")

    assert dsn.endswith("dbname=again")
    assert fetch(server, "SELECT to_regclass('leftover') IS NULL", "again") == [(True,)]
    slots = fetch(server, "SELECT slot_name FROM pg_replication_slots")
    assert ("again_slot",) not in slots


def test_restart_keeps_data_and_port() -> None:
    with ThrowawayPostgres() as pg:
        port = pg.port
        pg.execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (1), (2)")

        pg.restart()
        after_fast = fetch(pg, "SELECT count(*) FROM kept")
        pg.restart("immediate")
        after_crash = fetch(pg, "SELECT count(*) FROM kept")

        assert pg.port == port
        assert after_fast == after_crash == [(2,)]


def test_stop_is_idempotent_and_leaving_removes_the_directory() -> None:
    with ThrowawayPostgres() as pg:
        root = pg.root
        pg.stop()
        pg.stop()
        assert not pg.running
        with pytest.raises(psycopg.OperationalError):
            pg.execute("SELECT 1")

    assert not root.exists()


def test_keep_leaves_the_directory_for_inspection() -> None:
    with ThrowawayPostgres(keep=True) as pg:
        root = pg.root
    try:
        assert (root / "data" / "PG_VERSION").exists()
        assert "ready to accept connections" in (root / "server.log").read_text()
    finally:
        shutil.rmtree(root)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server over")
def test_as_root_the_server_processes_belong_to_postgres(
    server: ThrowawayPostgres,
) -> None:
    postgres_uid = pwd.getpwnam("postgres").pw_uid
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    with psycopg.connect(server.dsn()) as conn:
        backend_owner = os.stat(f"/proc/{conn.info.backend_pid}").st_uid

    assert os.stat(f"/proc/{pid}").st_uid == postgres_uid
    assert backend_owner == postgres_uid
    assert server.data_dir.stat().st_uid == postgres_uid


def test_extra_settings_reach_the_server() -> None:
    settings = {"max_slot_wal_keep_size": "64MB", "wal_level": "replica"}
    with ThrowawayPostgres(settings=settings) as pg:
        shown = fetch(pg, "SELECT current_setting('max_slot_wal_keep_size')")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            pg.execute("SELECT pg_create_logical_replication_slot('s', 'wal2json')")

    assert shown == [("64MB",)]


def test_fixed_settings_cannot_be_overridden() -> None:
    with pytest.raises(ConfigError, match="listen_addresses"):
        ThrowawayPostgres(settings={"listen_addresses": "*"})


def test_failed_start_reports_the_log_tail_and_cleans_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(**kwargs: str) -> str:
        made.append(real_mkdtemp(**kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    pg = ThrowawayPostgres(settings={"shared_buffers": "lots"})

    with pytest.raises(SourceError, match="shared_buffers") as caught:
        pg.start()

    assert "did not start" in str(caught.value)
    assert not pg.running
    assert len(made) == 1
    assert not Path(made[0]).exists()


def test_taken_port_moves_the_server_to_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, postgres.free_port()])
        monkeypatch.setattr(postgres, "free_port", lambda: next(ports))

        with ThrowawayPostgres() as pg:
            assert pg.port != taken
            assert fetch(pg, "SELECT 1") == [(1,)]


def test_fixed_port_that_is_taken_fails_with_the_reason() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()

        with pytest.raises(SourceError, match="could not bind"):
            ThrowawayPostgres(port=squatter.getsockname()[1]).start()


def test_missing_wal2json_is_a_config_error_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    scripts = {
        "initdb": "exit 0",
        "pg_ctl": "exit 0",
        "postgres": "echo 'postgres (PostgreSQL) 15.4'",
        "pg_config": f"echo {tmp_path / 'lib'}",
    }
    for name, body in scripts.items():
        (bindir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("CDC_TRACKER_PG_BINDIR", str(bindir))

    with pytest.raises(ConfigError, match="wal2json is not installed") as caught:
        ThrowawayPostgres().start()

    assert caught.value.hint == "apt-get install postgresql-15-wal2json"


def test_at_exit_servers_left_running_or_only_stopped_are_cleaned_up() -> None:
    script = textwrap.dedent(
        """
        from cdc_tracker.testing.postgres import ThrowawayPostgres
        running = ThrowawayPostgres().start()
        stopped = ThrowawayPostgres().start()
        stopped.stop()
        print("ROOTS", running.root, stopped.root, flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    roots = next(line for line in done.stdout.splitlines() if line.startswith("ROOTS"))

    assert [Path(root).exists() for root in roots.split()[1:]] == [False, False]
    assert done.stdout.count("throwaway postgres stopped") == 2


def test_a_killed_owner_neither_blocks_the_next_server_nor_leaves_an_orphan() -> None:
    script = textwrap.dedent(
        """
        import time
        from cdc_tracker.testing.postgres import ThrowawayPostgres
        pg = ThrowawayPostgres().start()
        print("READY", pg.root, pg.port, flush=True)
        time.sleep(60)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as owner:
        assert owner.stdout is not None
        ready = next(line for line in owner.stdout if line.startswith("READY"))
        _, orphan_root, orphan_port = ready.split()
        owner.kill()

    with ThrowawayPostgres() as pg:
        assert pg.port != int(orphan_port)
        assert fetch(pg, "SELECT 1") == [(1,)]
    assert wait_until_gone(Path(orphan_root), seconds=10)


def wait_until_gone(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not path.exists()


def test_start_postgres_gives_a_local_server_without_docker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CDC_TRACKER_TEST_DOCKER", raising=False)

    with start_postgres() as pg:
        assert isinstance(pg, ThrowawayPostgres)
        assert fetch(pg, "SHOW wal_level") == [("logical",)]


def test_start_postgres_falls_back_when_no_docker_engine_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CDC_TRACKER_TEST_DOCKER", "1")
    # Never ping a real engine's socket from the suite.
    monkeypatch.setattr(postgres_docker, "docker_answers", lambda: False)

    with start_postgres() as pg:
        assert isinstance(pg, ThrowawayPostgres)
    with pytest.raises(ConfigError, match="no Docker engine"):
        start_postgres(docker=True)
