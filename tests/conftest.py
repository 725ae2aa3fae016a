"""Fixtures on real parts: a PostgreSQL server with wal2json, a strict fake RudderStack.

One server serves the whole session; each test gets its own database (so its own
slot, tables and WAL positions) with the example schema, and its own receiver.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import structlog

from cdc_tracker import compiled, logs
from cdc_tracker.testing.postgres import PostgresServer, start_postgres
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import EXAMPLES, WRITE_KEY

_databases = itertools.count(1)


def pytest_sessionstart(session: pytest.Session) -> None:
    """The suite tests the compiled modules too: without them it would pass on
    the Python path alone and say nothing of the code the daemon runs."""
    absent = compiled.missing()
    if absent:
        pytest.exit(
            f"not built: {', '.join(absent)}: {compiled.HOW_TO_BUILD}", returncode=2
        )


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """A command run in-process (``main``) configures the logs for itself, at
    its own level: the next test must not inherit it (an info line would go
    unseen by ``capture_logs`` after a command that logs warnings only)."""
    yield
    structlog.reset_defaults()
    logs.forget_format()


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """A throwaway server (local, or Docker with CDC_TRACKER_TEST_DOCKER=1)."""
    # Commit timestamps let tests check that calls carry their commit time.
    server = start_postgres(settings={"track_commit_timestamp": "on"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def empty_db(pg: PostgresServer) -> Iterator[str]:
    """The dsn of a new, empty database; dropped, with its slots, afterwards."""
    name = f"t{next(_databases)}"
    yield pg.create_database(name)
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where datname = %s and pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
            "where database = %s and not active",
            (name,),
        )
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def db(empty_db: str) -> str:
    """The dsn of a new database holding the example schema (merchants, payouts)."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute((EXAMPLES / "schema.sql").read_text())
    return empty_db


@pytest.fixture
def receiver() -> Iterator[FakeRudderStack]:
    with FakeRudderStack(write_keys=[WRITE_KEY]) as fake:
        yield fake


@pytest.fixture
def example_rulebook() -> Path:
    return EXAMPLES / "rulebook.yaml"
