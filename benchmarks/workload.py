"""The benchmark's workload on the example schema: mixed transactions, one huge one.

Every transaction mixes the four kinds of change in fixed proportions: merchant
inserts (an identify and a track call each), merchant updates (an identify and a
"Plan Changed" track), payout inserts (a track when paid) and payout updates (no
rule: read and dropped). Ids are 1..count since nothing ever rolls back, so updates
touch exact ranges.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import psycopg

from cdc_tracker.model import Lsn

SEED_ROWS = 10_000
# Of every ten changes: merchant insert, merchant update, payout insert, payout update.
SINGLE_ROW_CYCLE = ("mi", "mu", "pi", "mi", "pi", "mi", "mu", "pi", "mi", "pu")
SHARES = (("mi", 0.4), ("mu", 0.2), ("pi", 0.3))

_MERCHANT_INSERT = """
INSERT INTO merchants (shop_domain, owner_name, email, plan_name, current_monthly_total,
  can_backdate, onboarding_completed, last_payout_fetch, currency, xero_connection_ok)
SELECT 'shop-' || g || '.myshopify.com', 'Owner ' || g, 'owner' || g || '@example.com',
  'basic', (g %% 1000) + 0.99, g %% 2 = 0, true, now(), 'EUR', true
FROM generate_series(%s::bigint, %s::bigint) g
"""
_MERCHANT_UPDATE = """
UPDATE merchants
SET plan_name = CASE plan_name WHEN 'basic' THEN 'pro' ELSE 'basic' END,
  current_monthly_total = current_monthly_total + 1, updated_at = now()
WHERE id > %s AND id <= %s
"""
_PAYOUT_INSERT = """
INSERT INTO payouts (merchant_id, amount, currency, status)
SELECT 1 + g %% %s, (g %% 100000) / 100.0 + 0.01, 'EUR',
  CASE WHEN g %% 4 = 0 THEN 'pending' ELSE 'paid' END
FROM generate_series(%s::bigint, %s::bigint) g
"""
_PAYOUT_UPDATE = "UPDATE payouts SET status = 'reconciled' WHERE id > %s AND id <= %s"


@dataclass
class Sizes:
    """How many transactions of each size, scaled from the full run."""

    singles: int
    hundreds: int
    ten_thousands: int
    big: int

    @classmethod
    def scaled(cls, scale: float) -> Sizes:
        return cls(
            singles=max(1, round(2_000 * scale)),
            hundreds=max(1, round(200 * scale)),
            ten_thousands=max(1, round(20 * scale)),
            big=max(1_000, round(1_000_000 * scale)),
        )

    @property
    def mixed_changes(self) -> int:
        return self.singles + 100 * self.hundreds + 10_000 * self.ten_thousands


@dataclass
class Generator:
    """Writes changes and keeps the id counters that make updates exact."""

    conn: psycopg.Connection[tuple[object, ...]]
    merchants: int = 0
    payouts: int = 0
    cursors: dict[str, int] = field(default_factory=lambda: {"mu": 0, "pu": 0})
    changes: int = 0

    def write(self, kind: str, n: int) -> None:
        """Make ``n`` changes of one kind in the current transaction."""
        if n <= 0:
            return
        if kind == "mi":
            first = self.merchants + 1
            self.conn.execute(_MERCHANT_INSERT, (first, first + n - 1))
            self.merchants += n
        elif kind == "pi":
            first = self.payouts + 1
            self.conn.execute(_PAYOUT_INSERT, (self.merchants, first, first + n - 1))
            self.payouts += n
        else:
            table_rows = self.merchants if kind == "mu" else self.payouts
            start = self.cursors[kind]
            if start + n > table_rows:
                start = 0
            sql = _MERCHANT_UPDATE if kind == "mu" else _PAYOUT_UPDATE
            self.conn.execute(sql, (start, start + n))
            self.cursors[kind] = start + n
        self.changes += n

    def transaction(self, size: int, index: int = 0) -> None:
        """One committed transaction of ``size`` changes in the fixed proportions."""
        with self.conn.transaction():
            if size == 1:
                self.write(SINGLE_ROW_CYCLE[index % len(SINGLE_ROW_CYCLE)], 1)
                return
            left = size
            for kind, share in SHARES:
                n = int(size * share)
                self.write(kind, n)
                left -= n
            self.write("pu", left)


def seed(conn: psycopg.Connection[tuple[object, ...]]) -> Generator:
    """Rows for updates to touch, written before any slot exists (never decoded)."""
    generator = Generator(conn)
    with conn.transaction():
        generator.write("mi", SEED_ROWS)
        generator.write("pi", SEED_ROWS)
    generator.changes = 0
    return generator


@dataclass
class Written:
    """What the workload wrote, and the positions that bound it."""

    changes: int
    mixed_changes: int
    transactions: int
    before_big: Lsn
    end: Lsn
    seconds: float


def write_workload(generator: Generator, sizes: Sizes, seed_value: int = 6) -> Written:
    """The mixed transactions in a shuffled order, then the big one."""
    started = time.perf_counter()
    plan = [1] * sizes.singles + [100] * sizes.hundreds + [10_000] * sizes.ten_thousands
    random.Random(seed_value).shuffle(plan)
    for index, size in enumerate(plan):
        generator.transaction(size, index)
    mixed = generator.changes
    before_big = flush_lsn(generator.conn)
    generator.transaction(sizes.big)
    return Written(
        changes=generator.changes,
        mixed_changes=mixed,
        transactions=len(plan) + 1,
        before_big=before_big,
        end=flush_lsn(generator.conn),
        seconds=time.perf_counter() - started,
    )


def flush_lsn(conn: psycopg.Connection[tuple[object, ...]]) -> Lsn:
    row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
    assert row is not None
    return Lsn.parse(str(row[0]))


def create_slot(conn: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (name,))
