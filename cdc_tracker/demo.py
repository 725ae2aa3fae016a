"""``cdc-tracker demo``: the whole pipeline on real parts, on this machine.

Starts a throwaway PostgreSQL with wal2json, creates the example schema, runs the
daemon with the example rulebook against a local RudderStack-compatible receiver,
plays a short story of a Shopify app's merchants, prints every call as the
receiver stores it, then shuts everything down. Nothing is canned: each call comes
from real WAL through the real daemon.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import IO, Any

import orjson
import psycopg

from cdc_tracker.daemon.loop import Daemon
from cdc_tracker.daemon.shipping import DestinationShipper
from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.model import Lsn
from cdc_tracker.rules.rulebook import Rulebook, load_rulebook
from cdc_tracker.settings import Settings
from cdc_tracker.testing.postgres import ThrowawayPostgres
from cdc_tracker.testing.rudderstack import FakeRudderStack, ReceivedCall

EXAMPLES = resources.files("cdc_tracker") / "examples"
WRITE_KEY = "demo-write-key"

STORY: list[tuple[str, list[str]]] = [
    (
        "Two merchants install the app",
        [
            "insert into merchants (shop_domain, owner_name, email, plan_name, "
            "currency, current_monthly_total) values "
            "('alpaca-socks.myshopify.com', 'Ada Park', 'ada@alpaca.example', "
            "'basic', 'EUR', 29.00), "
            "('bold-bikes.myshopify.com', 'Ben Ortiz', 'ben@bold.example', "
            "'basic', 'USD', 29.00)",
        ],
    ),
    (
        "Alpaca Socks moves to the pro plan",
        [
            "update merchants set plan_name = 'pro', current_monthly_total = 79.00, "
            "updated_at = now() where shop_domain = 'alpaca-socks.myshopify.com'",
        ],
    ),
    (
        "Payouts are fetched for Alpaca Socks: one paid, one pending "
        "(the rule tracks paid ones only)",
        [
            "insert into payouts (merchant_id, amount, currency, status) "
            "select id, 1234.56, 'EUR', 'paid' from merchants "
            "where shop_domain = 'alpaca-socks.myshopify.com'",
            "insert into payouts (merchant_id, amount, currency, status) "
            "select id, 80.10, 'EUR', 'pending' from merchants "
            "where shop_domain = 'alpaca-socks.myshopify.com'",
            "update merchants set last_payout_fetch = now(), updated_at = now() "
            "where shop_domain = 'alpaca-socks.myshopify.com'",
        ],
    ),
    (
        "Bold Bikes connects Xero, then the connection drops",
        [
            "update merchants set xero_connection_ok = true, updated_at = now() "
            "where shop_domain = 'bold-bikes.myshopify.com'",
            "update merchants set xero_connection_ok = false, updated_at = now() "
            "where shop_domain = 'bold-bikes.myshopify.com'",
        ],
    ),
]


def run_demo(rulebook: Path | None = None, out: IO[str] = sys.stdout) -> int:
    """Run the demo; returns 0 when every change was shipped and acknowledged.

    Raises ``RulebookError`` for a rulebook that cannot be read, before anything
    starts, or that does not fit the example schema, as soon as the daemon finds
    it; any other error that stops the daemon is raised likewise.
    """
    rulebook_path = Path(str(rulebook or EXAMPLES / "rulebook.yaml"))
    rules = load_rulebook(rulebook_path)
    say = _Printer(out)
    say.step("Starting a throwaway PostgreSQL with wal2json")
    with ThrowawayPostgres() as server:
        dsn = server.create_database("shop")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((EXAMPLES / "schema.sql").read_text())
        receiver = FakeRudderStack(write_keys=[WRITE_KEY], on_accept=say.call)
        with receiver:
            say.step(f"Local RudderStack-compatible receiver on {receiver.url}")
            settings = Settings(
                dsn=dsn,
                rulebook=rulebook_path,
                destination_url=receiver.url,
                write_key=WRITE_KEY,
                poll_interval=0.2,
            )
            calls = _play(settings, rules, dsn, say)
        say.step(f"Done: {calls} calls received; PostgreSQL and receiver stopped")
    return 0


def _play(settings: Settings, rulebook: Rulebook, dsn: str, say: _Printer) -> int:
    stop = threading.Event()
    client = RudderStackClient(settings.destination_settings())
    running = _Running(Daemon(settings, rulebook, DestinationShipper(client), stop))
    try:
        running.wait_until(
            lambda: running.daemon.slot is not None, "the daemon to start"
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            for title, statements in STORY:
                say.step(title)
                for statement in statements:
                    conn.execute(statement)
                _wait_until_done(running, _flushed(conn), title)
    finally:
        stop.set()
        running.thread.join(timeout=30)
        client.close()
    running.check_stopped()
    return running.daemon.counters.calls


class _Running:
    """The daemon in a thread of its own. An error that stops it is kept, to be
    raised in the demo's thread at once (and reported once), not printed there."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, name="cdc-tracker")
        self.thread.daemon = True
        self.thread.start()

    def wait_until(
        self, predicate: Callable[[], bool], what: str, timeout: float = 30.0
    ) -> None:
        """Return once ``predicate`` holds; raise the daemon's error as soon as it
        stops on one, or ``TimeoutError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def check_stopped(self) -> None:
        """After a stop: raise the error the daemon stopped on, if any, or
        ``TimeoutError`` if it has not stopped. The story going through is not
        enough for the demo to succeed."""
        if self.error is not None:
            raise self.error
        if self.thread.is_alive():
            raise TimeoutError("timed out waiting for the daemon to stop")

    def _run(self) -> None:
        try:
            self.daemon.run()
        except Exception as exc:  # for wait_until to raise
            self.error = exc


def _flushed(conn: psycopg.Connection[Any]) -> Lsn:
    row = conn.execute("select pg_current_wal_flush_lsn()::text").fetchone()
    assert row is not None
    return Lsn.parse(str(row[0]))


def _wait_until_done(running: _Running, lsn: Lsn, what: str) -> None:
    """Wait until the daemon has shipped and acknowledged everything up to ``lsn``."""
    running.wait_until(lambda: running.daemon.done >= lsn, what)


class _Printer:
    """Prints story steps and each received call, one readable line each."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.lock = threading.Lock()

    def step(self, text: str) -> None:
        self._write(f"\n== {text}")

    def call(self, received: ReceivedCall) -> None:
        payload = received.exact_payload()
        if payload["type"] == "identify":
            head = f"identify  user {payload['userId']:<3}"
            body = payload.get("traits", {})
        else:
            head = f"track     user {payload['userId']:<3} {payload['event']!r}"
            body = payload.get("properties", {})
        fields = orjson.dumps(body, default=_exact).decode() if body else ""
        self._write(f"   <- {head} {fields}  at {payload['timestamp']}")

    def _write(self, line: str) -> None:
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()


def _exact(value: object) -> orjson.Fragment:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(type(value).__name__)
