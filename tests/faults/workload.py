"""Shared parts of the fault tests: a writer, daemon subprocesses, and the checks.

``Writer`` commits a seeded stream of merchant and payout changes and counts the
calls the example rulebook must make of them, independently of the daemon.
``DaemonGroup`` runs ``python -m cdc_tracker run`` subprocesses and kills what is
left when the block ends. ``Delivery`` sums up what a receiver got against what
was expected: lost, unexpected and duplicated messageIds, per-user order.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import psycopg

from cdc_tracker.mapping import ids
from cdc_tracker.model import Lsn
from cdc_tracker.testing._rudder_checks import Answer
from cdc_tracker.testing.rudderstack import FakeRudderStack, ReceivedCall
from tests.harness import EXAMPLES, WRITE_KEY, insert_name, wait_until

PLANS = ("basic", "pro", "plus")
STATUSES = ("paid", "pending", "failed")
IDENTIFY = "identify public.merchants"


# -- the writer ------------------------------------------------------------------


@dataclass
class Tally:
    """What the writer committed, and the calls the example rulebook makes of it."""

    changes: int = 0
    calls: int = 0
    transactions: int = 0
    merchant_inserts: int = 0
    merchant_updates: int = 0
    payout_inserts: int = 0


@dataclass
class _Merchant:
    plan: str
    xero: bool


class Writer:
    """Commits ``target`` changes in transactions of mixed sizes, from ``seed``.

    Each transaction inserts merchants, updates some (plan and Xero flag), inserts
    payouts, or mixes the three. ``tally`` counts what the example rulebook must
    make of every committed change: identify + Merchant Installed per merchant
    insert; identify, plus Plan Changed when the plan moves and Xero Connection
    Lost when the flag drops, per update; Payout Fetched per paid payout.
    """

    def __init__(self, dsn: str, seed: int, target: int, pause: float = 0.0) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.target = target
        self.pause = pause
        self.tally = Tally()
        self.merchants: dict[int, _Merchant] = {}
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def join(self, timeout: float = 60.0) -> Tally:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "writer did not finish"
        if self.error is not None:
            raise self.error
        return self.tally

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn) as conn:
                while self.tally.changes < self.target:
                    self._transaction(conn)
                    time.sleep(self.pause * self.rng.random())
        except BaseException as exc:  # surfaced by join()
            self.error = exc
        finally:
            self.done.set()

    def _transaction(self, conn: psycopg.Connection[Any]) -> None:
        size = self.rng.choice((1, 1, 2, 3, 5, 8, 20, 50, 120))
        tally = Tally()
        kinds = ["insert"] if not self.merchants else ["insert", "update", "payout"]
        with conn.transaction():
            for _ in range(size):
                kind = self.rng.choice(kinds)
                if kind == "insert":
                    self._insert_merchant(conn, tally)
                elif kind == "update":
                    self._update_merchant(conn, tally)
                else:
                    self._insert_payout(conn, tally)
        # Counted only once committed.
        self.tally.changes += tally.changes
        self.tally.calls += tally.calls
        self.tally.merchant_inserts += tally.merchant_inserts
        self.tally.merchant_updates += tally.merchant_updates
        self.tally.payout_inserts += tally.payout_inserts
        self.tally.transactions += 1

    def _insert_merchant(self, conn: psycopg.Connection[Any], tally: Tally) -> None:
        plan, xero = self.rng.choice(PLANS), self.rng.random() < 0.5
        n = len(self.merchants) + tally.merchant_inserts
        row = conn.execute(
            "insert into merchants (shop_domain, owner_name, plan_name, currency, "
            "xero_connection_ok) values (%s, %s, %s, 'EUR', %s) returning id",
            (f"w{self.rng.random()}-{n}.myshopify.com", f"Owner {n}", plan, xero),
        ).fetchone()
        assert row is not None
        self.merchants[int(row[0])] = _Merchant(plan, xero)
        tally.merchant_inserts += 1
        tally.changes += 1
        tally.calls += 2

    def _update_merchant(self, conn: psycopg.Connection[Any], tally: Tally) -> None:
        merchant_id = self.rng.choice(list(self.merchants))
        state = self.merchants[merchant_id]
        plan, xero = self.rng.choice(PLANS), self.rng.random() < 0.5
        conn.execute(
            "update merchants set plan_name = %s, xero_connection_ok = %s "
            "where id = %s",
            (plan, xero, merchant_id),
        )
        tally.calls += 1 + (plan != state.plan) + (state.xero and not xero)
        self.merchants[merchant_id] = _Merchant(plan, xero)
        tally.merchant_updates += 1
        tally.changes += 1

    def _insert_payout(self, conn: psycopg.Connection[Any], tally: Tally) -> None:
        status = self.rng.choice(STATUSES)
        conn.execute(
            "insert into payouts (merchant_id, amount, currency, status) "
            "values (%s, %s, 'EUR', %s)",
            (self.rng.choice(list(self.merchants)), self.rng.randint(1, 99999) / 100,
             status),
        )  # fmt: skip
        tally.calls += status == "paid"
        tally.payout_inserts += 1
        tally.changes += 1


def insert_merchants(dsn: str, n: int, per_transaction: int = 50) -> Lsn:
    """Insert ``n`` merchants in transactions of ``per_transaction`` rows.

    Returns a WAL position read inside the first transaction, before its commit:
    a slot that has not acknowledged these rows stays at or below it.
    """
    floor: Lsn | None = None
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = conn.execute("select count(*) from merchants").fetchone()
        assert start is not None
        first = int(start[0])
        for low in range(first, first + n, per_transaction):
            high = min(low + per_transaction, first + n)
            with conn.transaction():
                conn.cursor().executemany(
                    "insert into merchants (shop_domain, owner_name, plan_name, "
                    "currency) values (%s, %s, 'basic', 'EUR')",
                    [(f"s{i}.myshopify.com", f"Owner {i}") for i in range(low, high)],
                )
                if floor is None:
                    row = conn.execute(
                        "select pg_current_wal_insert_lsn()::text"
                    ).fetchone()
                    assert row is not None
                    floor = Lsn.parse(str(row[0]))
    assert floor is not None
    return floor


def merchant_insert_ids(dsn: str, namespace: str) -> set[str]:
    """The messageIds the example rulebook gives the merchants now in the table."""
    with psycopg.connect(dsn) as conn:
        keys = [row[0] for row in conn.execute("select id from merchants")]
    return {
        ids.insert_id(namespace, insert_name(rule), [key])
        for key in keys
        for rule in (IDENTIFY, "Merchant Installed")
    }


def dead_letters(dsn: str) -> list[tuple[Any, ...]]:
    """(rule, reason, messageId of the call) of every stored dead letter."""
    with psycopg.connect(dsn) as conn:
        exists = conn.execute(
            "select to_regclass('cdc_tracker.dead_letters') is not null"
        ).fetchone()
        if not (exists and exists[0]):
            return []
        return conn.execute(
            "select rule, reason, call->>'messageId' from cdc_tracker.dead_letters "
            "order by id"
        ).fetchall()


# -- the receiver ------------------------------------------------------------------


class WatchedReceiver(FakeRudderStack):
    """A fake RudderStack that also counts POSTs as they arrive (before answering)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._arrivals = 0
        self._arrival_lock = threading.Lock()

    @property
    def arrivals(self) -> int:
        with self._arrival_lock:
            return self._arrivals

    def receive(self, path: str, headers: Message, raw: bytes) -> Answer | None:
        with self._arrival_lock:
            self._arrivals += 1
        return super().receive(path, headers, raw)


# -- daemon subprocesses -----------------------------------------------------------


def daemon_env(
    dsn: str, slot: str, url: str, namespace: str, **extra: str
) -> dict[str, str]:
    """The environment of a ``cdc-tracker run`` on the example rulebook."""
    env = {
        **os.environ,
        "CDC_TRACKER_DSN": dsn,
        "CDC_TRACKER_SLOT": slot,
        "CDC_TRACKER_RULEBOOK": str(EXAMPLES / "rulebook.yaml"),
        "CDC_TRACKER_NAMESPACE": namespace,
        "RUDDERSTACK_DATA_PLANE_URL": url,
        "RUDDERSTACK_WRITE_KEY": WRITE_KEY,
        "CDC_TRACKER_POLL_INTERVAL": "0.05",
        "CDC_TRACKER_HTTP_TIMEOUT": "2",
        "CDC_TRACKER_LOG_FORMAT": "json",
        # Several daemons run at once, here and in other test runs.
        "CDC_TRACKER_METRICS_ADDRESS": "off",
    }
    env.update(extra)
    return env


class DaemonProcess:
    """One ``python -m cdc_tracker run``; its JSON log lines are collected as they
    come."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc_tracker", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(ln) for ln in list(self.lines) if ln.startswith("{")]
        return [e for e in found if name is None or e.get("event") == name]

    def wait_for(self, event: str, timeout: float = 20.0, count: int = 1) -> None:
        wait_until(
            lambda: len(self.events(event)) >= count or self.proc.poll() is not None,
            timeout,
        )
        assert len(self.events(event)) >= count, (
            f"daemon exited {self.proc.returncode} before {event!r}:\n"
            + "\n".join(self.lines[-20:])
        )

    def kill(self) -> None:
        """SIGKILL: no drain, no advance, no goodbye."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@dataclass
class DaemonGroup:
    """Starts daemon subprocesses; every one still running is killed at the end."""

    started: list[DaemonProcess] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> DaemonProcess:
        process = DaemonProcess(env)
        self.started.append(process)
        return process


@contextmanager
def daemon_group() -> Iterator[DaemonGroup]:
    group = DaemonGroup()
    try:
        yield group
    finally:
        for process in group.started:
            process.close()


# -- the verdict -------------------------------------------------------------------


@dataclass
class Delivery:
    """What a receiver got, against the set of messageIds it should have got."""

    lost: set[str]
    unexpected: set[str]
    duplicates: int
    deliveries: int
    differing_duplicates: list[str]

    @classmethod
    def of(cls, calls: list[ReceivedCall], expected: set[str]) -> Delivery:
        counts = Counter(str(call.message_id) for call in calls)
        return cls(
            lost=expected - set(counts),
            unexpected=set(counts) - expected,
            duplicates=sum(n - 1 for n in counts.values()),
            deliveries=len(calls),
            differing_duplicates=_differing_duplicates(calls),
        )


def _differing_duplicates(calls: list[ReceivedCall]) -> list[str]:
    """messageIds delivered more than once with a different call (sentAt aside)."""
    first: dict[str, dict[str, Any]] = {}
    differing = []
    for call in calls:
        payload = {k: v for k, v in call.payload.items() if k != "sentAt"}
        seen = first.setdefault(str(call.message_id), payload)
        if seen != payload:
            differing.append(str(call.message_id))
    return differing


def first_occurrences_by_user(calls: list[ReceivedCall]) -> dict[str, list[str]]:
    """For each userId, its messageIds in the order they first arrived."""
    seen: set[str] = set()
    by_user: dict[str, list[str]] = defaultdict(list)
    for call in calls:
        message_id = str(call.message_id)
        if message_id not in seen:
            seen.add(message_id)
            by_user[str(call.user_id)].append(message_id)
    return dict(by_user)
