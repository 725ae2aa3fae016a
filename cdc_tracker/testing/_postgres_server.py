"""What every throwaway PostgreSQL server offers, wherever it runs.

``PostgresServer`` is the surface the tests and the demo use: ``dsn()``, ``url()``,
``execute()``, ``create_database()``, ``start()``/``stop()`` and ``with``. Servers
still running when the interpreter exits are stopped, and their files removed, by an
atexit hook.
"""

from __future__ import annotations

import abc
import atexit
import socket
from types import TracebackType
from typing import Literal, Self
from urllib.parse import quote

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import make_conninfo

from cdc_tracker.errors import SourceError

log = structlog.get_logger(__name__)

HOST = "127.0.0.1"
SUPERUSER = "cdc"
WAL2JSON_HINT = "apt-get install postgresql-15-wal2json"
BASE_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "fsync": "off",
    "full_page_writes": "off",
}
# synchronous_commit stays on: logical decoding reads only flushed WAL, so with it
# off a committed row reached the slot up to a wal_writer_delay later. With fsync off
# the flush costs almost nothing.

StopMode = Literal["fast", "immediate", "smart"]


class PostgresServer(abc.ABC):
    """What the tests and the demo need from a disposable server, local or in Docker."""

    host: str = HOST
    port: int = 0
    user: str = SUPERUSER
    password: str | None = None

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq keyword string for ``dbname`` on this server."""
        return make_conninfo(
            "",
            host=self.host,
            port=str(self.port),
            user=self.user,
            password=self.password,
            dbname=dbname,
        )

    def url(self, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL for ``dbname`` on this server."""
        secret = f":{quote(self.password, safe='')}" if self.password else ""
        user = quote(self.user, safe="")
        return f"postgresql://{user}{secret}@{self.host}:{self.port}/{quote(dbname)}"

    def execute(self, sql_text: str, dbname: str = "postgres") -> None:
        """Run ``sql_text`` (several statements allowed) in autocommit mode.

        psycopg errors propagate unchanged: tests often expect a statement to fail.
        """
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(sql_text)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name``, dropping any previous one, its sessions
        and its replication slots first. Returns the new database's dsn."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name)"
                " FROM pg_replication_slots WHERE database = %s",
                [name],
            )
            name_sql = sql.Identifier(name)
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name_sql)
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(name_sql))
        return self.dsn(name)

    @abc.abstractmethod
    def start(self) -> Self:
        """Start the server and wait until it accepts connections; idempotent."""

    @abc.abstractmethod
    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server; calling it again does nothing."""

    @abc.abstractmethod
    def discard(self) -> None:
        """Release what the stopped server left behind (files, containers)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self.discard()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to 0, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


_owned: set[PostgresServer] = set()


def track(server: PostgresServer, *, owned: bool) -> None:
    """Record whether ``server`` holds anything (a process, files, a container), so
    the atexit hook can stop and discard what callers left behind."""
    if owned:
        _owned.add(server)
    else:
        _owned.discard(server)


@atexit.register
def _release_leftovers() -> None:
    for server in list(_owned):
        try:
            server.stop("immediate")
        except SourceError:
            log.warning("throwaway postgres left running", port=server.port)
        server.discard()
