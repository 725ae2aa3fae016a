"""``python -m cdc_tracker.testing.postgres``: a throwaway server to try the daemon on.

Starts a private PostgreSQL with wal2json (as the tests do), creates database
``app`` with the example schema (or ``--schema``), and the daemon's role
``tracker`` with the grants README.md gives; prints the role's connection URL on
stdout, then serves until Ctrl-C or SIGTERM, and deletes everything on the way out.
Exit code 0, 1 when the server would not start, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import psycopg
import structlog
from psycopg import sql

from cdc_tracker.errors import ConfigError, SourceError
from cdc_tracker.testing.postgres import ThrowawayPostgres

EXAMPLE_SCHEMA = Path(__file__).resolve().parent.parent / "examples" / "schema.sql"
DATABASE = "app"
ROLE = "tracker"
_SCHEMAS_SQL = (
    "SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_' "
    "AND nspname <> 'information_schema'"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdc_tracker.testing.postgres",
        description=(
            "A throwaway PostgreSQL with wal2json on 127.0.0.1, to try "
            "'cdc-tracker run' on: database 'app' with the schema, role 'tracker' "
            "(REPLICATION, USAGE and SELECT on every schema and table made, CREATE "
            "on the database). Prints "
            "the role's URL, serves until Ctrl-C or SIGTERM, then deletes it all."
        ),
        epilog="example: --port 54329 --schema config/schema.sql",
    )
    parser.add_argument(
        "--schema",
        type=Path,
        default=EXAMPLE_SCHEMA,
        help="plain SQL run in database 'app' first, as one script (no psql "
        "backslash commands; default: the example schema)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port to listen on (default: a free one)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port (1-65535, or 0 for a free one)")
    try:
        schema = args.schema.read_text()
    except OSError as exc:
        parser.error(f"cannot read --schema {args.schema}: {exc.strerror}")
    # stdout carries the URL alone; the server's log lines go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    for stopping in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stopping, signal.default_int_handler)
    server = ThrowawayPostgres(port=args.port or None)
    try:
        with server:  # started on entering
            dsn = server.create_database(DATABASE)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(schema)
                _create_role(conn)
            url = f"postgresql://{ROLE}@{server.host}:{server.port}/{DATABASE}"
            sys.stdout.write(f"{url}\n")
            sys.stdout.flush()
            sys.stderr.write(
                f"throwaway postgres on port {server.port}: role {ROLE} (above) "
                f"and superuser {server.user}, no passwords; Ctrl-C or SIGTERM "
                "stops it and deletes its data\n"
            )
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except (ConfigError, SourceError, psycopg.Error) as exc:
        sys.stderr.write(f"throwaway postgres: {exc}\n")
        return 1


def _create_role(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """The README's role (its "Running it"), reading every table the schema
    made, in whatever schema."""
    role = sql.Identifier(ROLE)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(role))
    conn.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(DATABASE), role
        )
    )
    for (name,) in conn.execute(_SCHEMAS_SQL).fetchall():
        schema = sql.Identifier(str(name))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role))
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                schema, role
            )
        )
