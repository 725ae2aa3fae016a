"""Checks of what the role may do: replicate, read the tables, keep its own state."""

from __future__ import annotations

from cdc_tracker.ops.doctor.context import Context
from cdc_tracker.ops.doctor.result import Finding, failed, passed
from cdc_tracker.source.catalog import table_access

# Scalar subqueries are null when the table or schema is not there yet; the
# catalog is read directly because to_regclass needs USAGE on the schema.
_STATE_SQL = """
SELECT current_database(),
       (SELECT has_schema_privilege(current_user, n.oid, 'USAGE')
               AND has_table_privilege(current_user, c.oid,
                                       'SELECT, INSERT, UPDATE, DELETE')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'cdc_tracker' AND c.relname = 'checkpoints'),
       (SELECT has_schema_privilege(current_user, n.oid, 'USAGE, CREATE')
        FROM pg_namespace n WHERE n.nspname = 'cdc_tracker'),
       has_database_privilege(current_user, current_database(), 'CREATE')
"""


def replication_privilege(ctx: Context) -> Finding:
    """The role has REPLICATION (or is a superuser): slots need it."""
    role, superuser, replication = ctx.row(
        "SELECT rolname, rolsuper, rolreplication FROM pg_roles "
        "WHERE rolname = current_user"
    )
    name = "replication privilege"
    if superuser:
        return passed(name, f"role {role} is a superuser")
    if replication:
        return passed(name, f"role {role} has REPLICATION")
    return failed(
        name,
        f"role {role} has neither REPLICATION nor superuser: it cannot use a slot",
        f'ALTER ROLE "{role}" REPLICATION;  '
        "(on managed services, grant their replication role instead)",
    )


def table_grants(ctx: Context) -> Finding:
    """SELECT on every table the rulebook reads (tracked, or read by a lookup)
    that exists, and USAGE on its schema (missing tables: the schema check)."""
    tables = ctx.rules().schema_tables
    rows = table_access(ctx.db(), tables)
    (role,) = ctx.row("SELECT current_user")
    denied = [row.sql_table for row in rows if not row.select]
    closed = sorted({row.sql_schema for row in rows if not row.usage})
    name = "table grants"
    if denied or closed:
        problems, fixes = [], []
        if closed:
            problems.append(f"may not use schema {', '.join(closed)}")
            fixes.append(f'GRANT USAGE ON SCHEMA {", ".join(closed)} TO "{role}";')
        if denied:
            problems.append(f"may not SELECT from {', '.join(denied)}")
            fixes.append(f'GRANT SELECT ON {", ".join(denied)} TO "{role}";')
        return failed(name, f"role {role} {' and '.join(problems)}", " ".join(fixes))
    return passed(name, f"SELECT on {len(rows)} of {len(tables)} tables read")


def state_schema(ctx: Context) -> Finding:
    """The role can use, or create, schema ``cdc_tracker`` (checkpoints, dead
    letters)."""
    database, table_ok, schema_ok, database_ok = ctx.row(_STATE_SQL)
    (role,) = ctx.row("SELECT current_user")
    name = "state schema"
    if table_ok:
        return passed(name, "cdc_tracker.checkpoints is there and writable")
    if table_ok is None and schema_ok:
        return passed(name, "schema cdc_tracker is there; its tables will be made")
    if table_ok is None and schema_ok is None and database_ok:
        return passed(name, "schema cdc_tracker will be created on first run")
    if schema_ok is None:
        return failed(
            name,
            f"role {role} may not create schema cdc_tracker in {database}",
            f'GRANT CREATE ON DATABASE "{database}" TO "{role}";',
        )
    return failed(
        name,
        f"role {role} cannot write the tables of schema cdc_tracker",
        f'GRANT USAGE, CREATE ON SCHEMA cdc_tracker TO "{role}"; '
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "
        f'cdc_tracker TO "{role}";',
    )
