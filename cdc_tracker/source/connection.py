"""Database connections, and the one place psycopg's exceptions become ours.

``translate_errors`` maps psycopg's tree onto the source branch of
``cdc_tracker.errors``: what retrying can fix (a server down or restarting) is
``SourceUnavailable``; what it cannot (a bad DSN, a wrong password, a missing
database or privilege) is ``ConfigError``, so that a supervisor sees exit code 2
instead of a process retrying forever. Messages never carry a password.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict

from cdc_tracker.errors import (
    ConfigError,
    SlotBusy,
    SlotLost,
    SourceError,
    SourceUnavailable,
)

# libpq connection failures carry no SQLSTATE: these words mark the ones that
# will fail the same way however often they are retried.
_PERMANENT = (
    "connection is bad",
    "password authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "not permitted to log in",
    "password is required",
    "could not translate host name",
    "failed to resolve host",
    "unrecognized configuration parameter",
    "invalid value for parameter",
    "must be superuser or replication role",  # a stream's role without REPLICATION
    "exceeds max_wal_senders (currently 0)",  # a server that streams to nobody
)
_UNREADABLE = (
    'the DSN cannot be read as written (a password holding spaces or "@" must '
    "be percent-encoded in a URI, %20 and %40, or quoted in key=value form)"
)
_PASSWORD_FIELD = re.compile(r"password\s*=\s*(.*?)(?=\s+\w+\s*=|&|$)")
_BREAKS_SYNTAX = re.compile(r"[\s@]")
_SECRET = re.compile(r"(password\s*=\s*)('[^']*'|\S+)|(://[^:/@\s]*:)([^@\s]*)(@)")


# Values are printed by the server (wal2json included) in the session's zone and
# style: every connection that reads values sets these first.
SESSION_SETTINGS = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'iso_8601'",
    "SET extra_float_digits = 3",
    "SET bytea_output = 'hex'",  # wal2json cuts the "\\x" off: it assumes hex
)


@contextmanager
def translate_errors(slot: str | None = None, dsn: str = "") -> Iterator[None]:
    """Turn psycopg exceptions into ours; the only place that knows psycopg's tree.

    ``slot`` is the replication slot the statements work on, if any: its errors
    name it.
    """
    try:
        yield
    except pgerrors.ObjectInUse as exc:
        if slot is None:
            raise SourceUnavailable(f"the server refused: {_first_line(exc)}") from exc
        raise SlotBusy(
            f"replication slot '{slot}' is in use by another process",
            hint="is another cdc-tracker running against this slot?",
        ) from exc
    except pgerrors.UndefinedObject as exc:
        if slot is None or "replication slot" not in str(exc):  # e.g. a setting
            message = redact(_first_line(exc), dsn)
            raise ConfigError(f"the server refused: {message}") from exc
        raise SlotLost(
            f"replication slot '{slot}' does not exist",
            hint="it was dropped: see 'cdc-tracker replay --since' to backfill",
        ) from exc
    except pgerrors.LockNotAvailable as exc:
        if slot is None:
            raise SourceUnavailable(
                f"a statement waited too long for a lock: {_first_line(exc)}"
            ) from exc
        raise SourceUnavailable(
            f"creating replication slot '{slot}' waited too long for open "
            "transactions to end",
            hint="a slot waits for every transaction holding a transaction id: "
            "look for 'idle in transaction' sessions in pg_stat_activity",
        ) from exc
    except pgerrors.ObjectNotInPrerequisiteState as exc:
        raise _prerequisite(slot, exc) from exc
    except pgerrors.ConfigurationLimitExceeded as exc:
        raise ConfigError(
            f"the server refused: {_first_line(exc)}",
            hint="raise max_replication_slots, or drop slots nobody reads "
            "(SELECT slot_name, active FROM pg_replication_slots)",
        ) from exc
    except pgerrors.UndefinedFile as exc:
        raise ConfigError(
            f"the server cannot load a file: {redact(_first_line(exc), dsn)}",
            hint="is wal2json installed on the database server? (Debian: "
            "postgresql-<major>-wal2json; see 'cdc-tracker doctor')",
        ) from exc
    except pgerrors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"permission denied: {_first_line(exc)}",
            hint="the role needs REPLICATION, SELECT on the tables it reads and "
            "USAGE on their schemas, and CREATE on the database (see "
            "'cdc-tracker doctor')",
        ) from exc
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
        raise _connection_failure(exc, dsn) from exc
    except psycopg.Error as exc:
        code = exc.sqlstate or "without SQLSTATE"
        raise SourceError(f"database error {code}: {_first_line(exc)}") from exc


def _prerequisite(slot: str | None, exc: psycopg.Error) -> SourceError | ConfigError:
    # 55000 covers both a slot that lost its WAL and a server set up wrong.
    if slot is not None and ("no longer" in str(exc) or "invalidated" in str(exc)):
        return SlotLost(
            f"replication slot '{slot}' can no longer return changes",
            hint="WAL it needed was removed; recreate the slot and replay --since",
        )
    return ConfigError(
        f"the server refused logical decoding: {_first_line(exc)}",
        hint="cdc-tracker needs wal_level = logical and the wal2json plugin",
    )


def _connection_failure(exc: psycopg.Error, dsn: str) -> SourceError | ConfigError:
    # libpq's own words start "connection failed: "; ours say it already.
    message = redact(_first_line(exc), dsn).removeprefix("connection failed: ")
    hint = _connection_hint(message)
    # A ProgrammingError (SQLSTATE class 42, or a DSN libpq cannot parse) fails
    # the same way however often it is retried.
    if isinstance(exc, psycopg.ProgrammingError) or (
        exc.sqlstate is None and any(word in message for word in _PERMANENT)
    ):
        return ConfigError(
            f"cannot connect to the database: {message}",
            hint=hint
            or "check the DSN (--dsn or CDC_TRACKER_DSN): host, port, database, "
            "user, password",
        )
    return SourceUnavailable(
        f"database connection failed: {message}",
        hint=hint
        or "is the database up, and at the DSN's host and port (--dsn or "
        "CDC_TRACKER_DSN)?",
    )


def _connection_hint(message: str) -> str | None:
    if "replication role" in message:
        return (
            "give the role REPLICATION (ALTER ROLE ... REPLICATION), which "
            "streaming a slot needs"
        )
    if "max_wal_senders" in message:
        return (
            "every WAL sender is taken: raise max_wal_senders (then restart "
            "PostgreSQL), or stop a replication client nobody needs"
        )
    return None


def redact(message: str, dsn: str = "") -> str:
    """``message`` without the DSN's password, wherever it shows up.

    A password with spaces or "@" can break the DSN's syntax, and libpq then
    quotes pieces of it in its message: such a message is not repeated at all.
    """
    if _breaks_syntax(dsn):
        return _UNREADABLE
    message = _SECRET.sub(_mask, message)
    for secret in _passwords(dsn):
        message = message.replace(secret, "***")
    return message


def _breaks_syntax(dsn: str) -> bool:
    """Whether the password as written breaks the DSN apart (an unquoted space, a
    raw "@" in a URI), so that libpq's message may quote any piece of it."""
    if "://" in dsn:
        return any(_BREAKS_SYNTAX.search(value) for value in _written_passwords(dsn))
    return any(
        not value.startswith("'") and re.search(r"\s", value)
        for value in _written_passwords(dsn)
    )


def _mask(match: re.Match[str]) -> str:
    if match.group(1):
        return match.group(1) + "***"
    return match.group(3) + "***" + match.group(5)


def _passwords(dsn: str) -> list[str]:
    """Every form of the DSN's password a message could show, longest first."""
    found = [m.group(2) for m in _SECRET.finditer(dsn) if m.group(2)]
    for written in _written_passwords(dsn):
        found += [written, unquote(written)]
    secrets = {secret.strip("'") for secret in found} - {""}
    return sorted(secrets, key=len, reverse=True)


def _written_passwords(dsn: str) -> list[str]:
    """The DSN's passwords as written: every ``password=`` field (key=value, or a
    URI's ``?password=``) up to the next keyword or parameter, and a URI's own,
    which runs to the last "@"."""
    found = [m.group(1) for m in _PASSWORD_FIELD.finditer(dsn)]
    _, separator, rest = dsn.partition("://")
    userinfo = rest.rpartition("@")[0] if separator else ""
    if ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# How long a connection may take to open when the DSN sets no connect_timeout:
# a server that takes a connection and never answers would hold a command (and
# a Ctrl-C) for psycopg's own 130 s.
CONNECT_SECONDS = 10


def connect_timeout(dsn: str) -> int | str:
    """The ``connect_timeout`` to open ``dsn`` with: its own, or
    ``CONNECT_SECONDS`` when it sets none."""
    try:
        given: int | str | None = conninfo_to_dict(dsn).get("connect_timeout")
    except psycopg.ProgrammingError:
        given = None  # connecting says what is wrong with the DSN
    return given or CONNECT_SECONDS


def connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    """Open an autocommit connection with the session settings decoding relies on.

    Raises ``ConfigError`` for what retrying cannot fix, ``SourceUnavailable``
    for a server that does not answer.
    """
    refuse_unreadable(dsn)
    with translate_errors(dsn=dsn):
        conn = psycopg.connect(
            dsn,
            autocommit=True,
            application_name="cdc-tracker",
            connect_timeout=connect_timeout(dsn),
        )
        for statement in SESSION_SETTINGS:
            conn.execute(statement)
    return conn


def refuse_unreadable(dsn: str) -> None:
    """Raise ``ConfigError`` for a DSN whose password breaks its syntax, before
    libpq reads it: a raw "@" makes part of the password a host name, which would
    be sent to name resolution."""
    if _breaks_syntax(dsn):
        raise ConfigError(
            f"cannot connect to the database: {_UNREADABLE}",
            hint="check the DSN (--dsn or CDC_TRACKER_DSN)",
        )


def lock_key(name: str) -> int:
    """A stable 32-bit advisory-lock key for a name (a slot, a replay job)."""
    return zlib.crc32(name.encode()) - (1 << 31)


def try_advisory_lock(
    conn: psycopg.Connection[tuple[object, ...]], lock_class: int, key: int
) -> bool:
    """Take the session advisory lock (``lock_class``, ``key``); False when another
    session holds it. It lasts as long as ``conn``."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock(%s, %s)", (lock_class, key)
    ).fetchone()
    return bool(row and row[0])
