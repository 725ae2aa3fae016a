"""``python -m cdc_tracker.testing.postgres``: a server to try the daemon on."""

from __future__ import annotations

import selectors
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

COMMAND = [sys.executable, "-m", "cdc_tracker.testing.postgres"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The command to its end, with bad arguments or a bad schema."""
    return subprocess.run(
        [*COMMAND, *args], check=False, capture_output=True, text=True, timeout=60
    )


def first_line(process: subprocess.Popen[str], timeout: float = 60) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(timeout), "no URL printed in time"
    return process.stdout.readline().strip()


@pytest.mark.parametrize("stopping", [signal.SIGTERM, signal.SIGINT])
def test_it_serves_the_schema_to_the_tracker_role_until_stopped(
    stopping: signal.Signals,
) -> None:
    with subprocess.Popen(
        COMMAND, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            url = first_line(process)
            assert url.startswith("postgresql://tracker@127.0.0.1:")
            assert url.endswith("/app")
            with psycopg.connect(url, autocommit=True) as conn:
                count = conn.execute("SELECT count(*) FROM merchants").fetchone()
                assert count == (0,)
                replication = conn.execute(
                    "SELECT rolreplication FROM pg_roles WHERE rolname = current_user"
                ).fetchone()
                assert replication == (True,)
                conn.execute("CREATE SCHEMA cdc_tracker")  # CREATE on the database
            process.send_signal(stopping)
            assert process.wait(timeout=60) == 0
        finally:
            process.kill()
        assert process.stderr is not None
        told = process.stderr.read()
    assert "Ctrl-C or SIGTERM" in told
    assert "Traceback" not in told
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def test_a_schema_file_of_ones_own_is_run_first(tmp_path: Path) -> None:
    schema = tmp_path / "mine.sql"
    schema.write_text(
        "create table accounts (id bigint primary key, plan text);\n"
        "create schema crm; create table crm.owners (id bigint primary key);"
    )
    with subprocess.Popen(
        [*COMMAND, "--schema", str(schema)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            with psycopg.connect(first_line(process), autocommit=True) as conn:
                # The role reads every table, whatever its schema.
                for table in ("accounts", "crm.owners"):
                    count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                    assert count == (0,)
            process.terminate()
            assert process.wait(timeout=60) == 0
        finally:
            process.kill()


def test_a_missing_schema_file_is_bad_usage(tmp_path: Path) -> None:
    done = run("--schema", str(tmp_path / "nowhere.sql"))
    assert done.returncode == 2
    assert "cannot read --schema" in done.stderr
    assert "nowhere.sql" in done.stderr


def test_a_port_out_of_range_is_bad_usage_before_anything_starts() -> None:
    done = run("--port", "99999")
    assert done.returncode == 2
    assert "--port 99999 is not a port (1-65535, or 0 for a free one)" in done.stderr
    assert "throwaway postgres started" not in done.stderr


def test_a_schema_that_fails_is_named_with_the_servers_error(
    tmp_path: Path,
) -> None:
    schema = tmp_path / "broken.sql"
    schema.write_text("create tabel oops (id int);")
    done = run("--schema", str(schema))
    assert done.returncode == 1
    assert 'syntax error at or near "tabel"' in done.stderr
    assert done.stdout == ""
