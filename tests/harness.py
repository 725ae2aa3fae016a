"""Run the real daemon against a test database and receiver, and wait on it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

from cdc_tracker import cli
from cdc_tracker.daemon.loop import Daemon
from cdc_tracker.daemon.shipping import DestinationShipper
from cdc_tracker.destination.backoff import Backoff
from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.mapping import ids
from cdc_tracker.model import Change, Lsn
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.settings import Settings
from cdc_tracker.source.slot import Slot, connect
from cdc_tracker.source.stream import Stream
from cdc_tracker.source.wal2json import Transaction, parse_row
from cdc_tracker.testing.postgres import PostgresServer
from cdc_tracker.testing.rudderstack import FakeRudderStack

EXAMPLES = Path(__file__).resolve().parent.parent / "cdc_tracker" / "examples"
WRITE_KEY = "test-write-key"


def settings_for(
    dsn: str, receiver: FakeRudderStack, rulebook: Path, **extra: Any
) -> Settings:
    # Slots are cluster-wide: one per test database.
    dbname = conninfo_to_dict(dsn)["dbname"]
    base = Settings(
        dsn=dsn,
        slot=f"cdc_tracker_{dbname}",
        rulebook=rulebook,
        destination_url=receiver.url,
        write_key=WRITE_KEY,
        poll_interval=0.05,
        http_timeout=2.0,
        # A call refused with none taken after it is held this long, not 10 min.
        refusal_patience=0.5,
    )
    return replace(base, **extra)


class Running:
    """A daemon running in a thread; ``caught_up`` waits for it to ship everything."""

    def __init__(
        self, daemon: Daemon, thread: threading.Thread, stop: threading.Event, dsn: str
    ) -> None:
        self.daemon = daemon
        self.thread = thread
        self.stop_event = stop
        self.dsn = dsn
        self.error: BaseException | None = None
        self.client: RudderStackClient | None = None

    def caught_up(self, timeout: float = 20.0) -> Lsn:
        """Wait until every transaction committed so far is acknowledged."""
        target = flush_lsn(self.dsn)
        wait_until(
            lambda: self.daemon.done >= target or not self.thread.is_alive(), timeout
        )
        if self.error is not None:
            raise self.error
        assert self.daemon.done >= target, (
            f"daemon at {self.daemon.done}, wanted {target}"
        )
        return target

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "daemon did not stop within 30 s"


@contextmanager
def running_daemon(
    settings: Settings, *, backoff: Backoff | None = None, recreate_slot: bool = False
) -> Iterator[Running]:
    stop = threading.Event()
    client = RudderStackClient(
        settings.destination_settings(),
        backoff=backoff or Backoff(initial=0.01, cap=0.05),
    )
    daemon = Daemon(
        settings,
        load_rulebook(settings.rulebook),
        DestinationShipper(client),
        stop,
        recreate_slot=recreate_slot,
        reconnect=Backoff(initial=0.05, cap=0.5),
    )
    holder: list[Running] = []

    def target() -> None:
        try:
            daemon.run()
        except BaseException as exc:  # surfaced by caught_up()
            holder[0].error = exc

    thread = threading.Thread(target=target, name="daemon-under-test", daemon=True)
    running = Running(daemon, thread, stop, settings.dsn)
    running.client = client
    holder.append(running)
    thread.start()
    try:
        wait_until(lambda: daemon.slot is not None or not thread.is_alive(), 20)
        if running.error is not None:
            raise running.error
        yield running
    finally:
        running.stop()
        client.close()


def flush_lsn(dsn: str) -> Lsn:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select pg_current_wal_flush_lsn()::text").fetchone()
    assert row is not None
    return Lsn.parse(str(row[0]))


def walsender_pid(dsn: str, slot: str) -> int | None:
    """The server process streaming ``slot``, or None while none does."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select active_pid from pg_replication_slots where slot_name = %s", (slot,)
        ).fetchone()
    return None if row is None else row[0]


def slot_position(dsn: str, slot: str | None = None) -> Lsn:
    slot = slot or f"cdc_tracker_{conninfo_to_dict(dsn)['dbname']}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select confirmed_flush_lsn::text from pg_replication_slots "
            "where slot_name = %s",
            (slot,),
        ).fetchone()
    assert row is not None, f"slot {slot} does not exist"
    return Lsn.parse(str(row[0]))


def cli_main(args: list[str]) -> int:
    """``cdc-tracker`` in-process, leaving structlog as it was (the CLI points it
    at the stderr of the moment, which pytest swaps per test)."""
    saved = structlog.get_config()
    try:
        return cli.main(args)
    finally:
        structlog.configure(**saved)


def retry_all_letters(settings: Settings, monkeypatch: Any) -> int:
    """``cdc-tracker deadletters retry --all`` for ``settings``' slot, rulebook
    and destination (``monkeypatch``: pytest's, to set the destination's env)."""
    monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", settings.destination_url)
    monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", WRITE_KEY)
    flags = ["--dsn", settings.dsn, "--slot", settings.slot]
    flags += ["--rulebook", str(settings.rulebook)]
    return cli_main(["deadletters", "retry", "--all", *flags])


def sql(dsn: str, *statements: str) -> None:
    """Run each statement in its own autocommit transaction."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def transaction(dsn: str, *statements: str) -> None:
    """Run the statements in one transaction."""
    with psycopg.connect(dsn) as conn:
        for statement in statements:
            conn.execute(statement)


def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s")
        time.sleep(0.02)


def create_slot(settings: Settings) -> None:
    """Create the daemon's slot now, so that changes made before it starts count."""
    with connect(settings.dsn) as conn:
        Slot(conn, settings.slot).ensure(create=True)


@contextmanager
def slot_in_another_database(admin_dsn: str, slot: str) -> Iterator[None]:
    """A wal2json slot named ``slot`` in the database of ``admin_dsn`` (another
    one than the test's), dropped after."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (slot,)
        )
        try:
            yield
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def read_slot(dsn: str, slot: str, tables: list[str]) -> list[str]:
    """The wal2json rows waiting in ``slot`` for ``tables``, streamed as the daemon
    streams them, until none follows within half a second between transactions
    (a busy server may be slower than that within one, or before its first row);
    the slot is then moved past them (past the last commit read: the server's
    keepalive may not have said so yet, and the next read would get it again).
    Transactions without a row for ``tables`` are left out: wal2json writes
    their B and C rows too, and the server's own (autovacuum's) come at random.
    Raises when the server sends nothing for ``_READ_SLOT_SECONDS`` before the
    first row or inside a transaction."""
    stream = Stream(dsn, slot, tables, [])
    stream.open()
    try:
        rows: list[str] = []
        inside = False
        read_upto = Lsn(0)
        deadline = time.monotonic() + _READ_SLOT_SECONDS
        while True:
            data = stream.read(0.5)
            if data is None:
                if rows and not inside:
                    break
                if time.monotonic() > deadline:
                    where = "inside a transaction" if rows else "before any row"
                    raise AssertionError(f"slot {slot}: nothing came {where}")
                continue
            deadline = time.monotonic() + _READ_SLOT_SECONDS
            row = bytes(data).decode()
            if row.startswith('{"action":"B"'):
                inside = True
            elif row.startswith('{"action":"C"'):
                inside = False
                read_upto = max(read_upto, Lsn.parse(json.loads(row)["nextlsn"]))
                if rows and rows[-1].startswith('{"action":"B"'):
                    # An empty transaction (autovacuum analysing a catalog of a
                    # new database, say): not what the test wrote.
                    rows.pop()
                    continue
            rows.append(row)
        stream.confirm(max(stream.sent_upto, read_upto))
    finally:
        stream.close()
    return rows


# How long read_slot waits for a row that does not come.
_READ_SLOT_SECONDS = 10.0


@contextmanager
def module_database(
    pg: PostgresServer, name: str, slot: str, schema: str
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A database of its own for a test module, with ``schema`` and ``slot``
    made; dropped, with the slot, afterwards."""
    dsn = pg.create_database(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(schema)
            Slot(conn, slot).ensure()
            yield conn
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                "where slot_name = %s",
                (slot,),
            )
            conn.execute(f'drop database if exists "{name}" with (force)')


def live_changes(dsn: str, statements: list[str], tables: list[str]) -> list[Change]:
    """The changes the server writes for ``statements`` on ``tables``, parsed as
    the daemon parses them (through a slot of their own, dropped after)."""
    slot = "live_changes"
    with connect(dsn) as conn:
        Slot(conn, slot).ensure(create=True)
        sql(dsn, *statements)
        rows = read_slot(dsn, slot, tables)
        conn.execute("select pg_drop_replication_slot(%s)", [slot])
    tx = Transaction()
    events = [parse_row(data, tx) for data in rows]
    return [event for event in events if isinstance(event, Change)]


def slot_exists(dsn: str, slot: str | None = None) -> bool:
    slot = slot or f"cdc_tracker_{conninfo_to_dict(dsn)['dbname']}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select 1 from pg_replication_slots where slot_name = %s", (slot,)
        ).fetchone()
    return row is not None


def insert_name(rule_id: str, rulebook: Path = EXAMPLES / "rulebook.yaml") -> str:
    """How a rule of ``rulebook`` is named in insert messageIds."""
    book = load_rulebook(rulebook)
    rule = next(r for r in book.rules if r.id == rule_id)
    return ids.insert_name(rule, book.timezone)


EMAIL_USER_RULEBOOK = """\
version: 1
tables:
  public.merchants:
    user_id: email
identify:
  - table: public.merchants
    traits:
      plan: plan_name
"""


def email_user_rulebook(directory: Path) -> Path:
    """A rulebook whose userId is merchants.email: a null email is a dead letter."""
    path = directory / "rulebook.yaml"
    path.write_text(EMAIL_USER_RULEBOOK)
    return path
