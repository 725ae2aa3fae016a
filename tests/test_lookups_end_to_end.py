"""Lookups end to end: payouts sent as their merchant's shop, through the daemon."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from cdc_tracker.errors import RulebookError
from cdc_tracker.mapping import lookups as lookups_module
from cdc_tracker.mapping.lookups import Lookups
from cdc_tracker.ops.metrics import DaemonCollector
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import running_daemon, settings_for, sql

# Only payouts are tracked: merchants is read by the lookup alone.
RULEBOOK = """\
version: 1
tables:
  public.payouts:
    user_id: merchant.shop_domain
    cursor: created_at
    lookups:
      merchant:
        table: public.merchants
        key: {id: merchant_id}
        missing: MISSING_POLICY
track:
  - event: Payout Fetched
    table: public.payouts
    on: insert
    properties:
      amount: amount
      plan: merchant.plan_name
      total: merchant.current_monthly_total
      onboarded: merchant.onboarding_completed
  - event: Big Payout
    table: public.payouts
    on: insert
    when: amount > 1000
"""

MERCHANT = (
    "insert into merchants (id, shop_domain, plan_name, current_monthly_total) "
    "values ({id}, 'shop{id}.myshopify.com', 'basic', 12.50)"
)
ABSENT_MERCHANT = 987654  # a key value that must never reach a log line


def rulebook(tmp_path: Path, missing: str = "dead_letter") -> Path:
    path = tmp_path / "rulebook.yaml"
    path.write_text(RULEBOOK.replace("MISSING_POLICY", missing))
    return path


def payout(merchant_id: int, amount: str = "10.00") -> str:
    return (
        "insert into payouts (merchant_id, amount, currency, status) "
        f"values ({merchant_id}, {amount}, 'EUR', 'paid')"
    )


def payouts_sent(receiver: FakeRudderStack) -> list[dict[str, Any]]:
    calls = [call.exact_payload() for call in receiver.calls]
    return [call for call in calls if call.get("event") == "Payout Fetched"]


def lookups_of(running: Any) -> Lookups:
    found = running.daemon.mapper.lookups
    assert isinstance(found, Lookups)
    return found


def test_payout_is_sent_as_its_merchants_shop_with_the_merchants_plan(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """userId and properties come from the merchant row, converted by type."""
    sql(db, MERCHANT.format(id=7))
    settings = settings_for(db, receiver, rulebook(tmp_path))
    with running_daemon(settings) as daemon:
        sql(db, payout(7), payout(7, "2000.00"))
        daemon.caught_up()
        stats = lookups_of(daemon).stats
    sent = payouts_sent(receiver)
    assert [call["userId"] for call in sent] == ["shop7.myshopify.com"] * 2
    assert sent[0]["properties"] == {
        "amount": 10,
        "plan": "basic",
        "total": 12.5,
        "onboarded": False,
    }
    big = [c.payload for c in receiver.calls if c.payload["event"] == "Big Payout"]
    assert [call["userId"] for call in big] == ["shop7.myshopify.com"]
    assert stats.queries == 1  # one merchant, one query; the rest from the cache
    assert stats.cache_hits >= 1


def test_payout_of_a_missing_merchant_is_skipped_and_counted_with_skip(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    sql(db, "alter table payouts drop constraint payouts_merchant_id_fkey")
    sql(db, MERCHANT.format(id=7))
    settings = settings_for(db, receiver, rulebook(tmp_path, "skip"))
    with running_daemon(settings) as daemon:
        sql(db, payout(ABSENT_MERCHANT), payout(7))
        daemon.caught_up()
        stats = lookups_of(daemon).stats
        exposed = DaemonCollector(daemon.daemon.counters, None).collect()
        skips = next(m for m in exposed if m.name == "cdc_tracker_lookup_skips")
    assert [call["userId"] for call in payouts_sent(receiver)] == [
        "shop7.myshopify.com"
    ]
    # Big Payout's 'when' is false for it, before its userId is looked up.
    assert stats.skipped == {"Payout Fetched": 1}
    assert stats.no_row == 1
    # On /metrics, as the README says.
    assert [(s.labels, s.value) for s in skips.samples] == [
        ({"rule": "Payout Fetched"}, 1.0)
    ]
    with psycopg.connect(db) as conn:
        assert conn.execute(
            "select count(*) from cdc_tracker.dead_letters"
        ).fetchone() == (0,)


def test_payout_of_a_missing_merchant_is_a_dead_letter_without_the_key_in_logs(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    sql(db, "alter table payouts drop constraint payouts_merchant_id_fkey")
    settings = settings_for(db, receiver, rulebook(tmp_path, "dead_letter"))
    with capture_logs() as logs, running_daemon(settings) as daemon:
        sql(db, payout(ABSENT_MERCHANT))
        daemon.caught_up()
    assert payouts_sent(receiver) == []
    with psycopg.connect(db) as conn:
        letters = conn.execute(
            "select rule, reason, change->'new'->>'merchant_id' "
            "from cdc_tracker.dead_letters order by id"
        ).fetchall()
    reason = "lookup merchant found no row in public.merchants for id = merchant_id"
    assert letters == [
        ("Payout Fetched", reason, str(ABSENT_MERCHANT)),  # the change keeps it
    ]
    assert [log["reason"] for log in logs if log["event"] == "dead letter"] == [reason]
    assert str(ABSENT_MERCHANT) not in repr(logs)


def test_cached_merchant_is_served_until_the_ttl_then_read_again(
    db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Within the TTL a changed merchant reads as it was; after it, as it is."""
    monkeypatch.setattr(lookups_module, "CACHE_TTL_SECONDS", 1.0)
    sql(db, MERCHANT.format(id=7))
    settings = settings_for(db, receiver, rulebook(tmp_path))
    with running_daemon(settings) as daemon:
        sql(db, payout(7))
        daemon.caught_up()
        sql(db, "update merchants set plan_name = 'pro' where id = 7", payout(7))
        daemon.caught_up()
        time.sleep(1.1)
        sql(db, payout(7))
        daemon.caught_up()
        stats = lookups_of(daemon).stats
    plans = [call["properties"]["plan"] for call in payouts_sent(receiver)]
    assert plans == ["basic", "basic", "pro"]
    assert stats.queries == 2


def test_cache_holds_at_most_its_bound_of_related_rows(
    db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room for 2 merchants, cycling through 3 evicts the least recent."""
    monkeypatch.setattr(lookups_module, "CACHE_ENTRIES", 2)
    sql(db, *(MERCHANT.format(id=i) for i in (1, 2, 3)))
    settings = settings_for(db, receiver, rulebook(tmp_path))
    with running_daemon(settings) as daemon:
        sql(db, payout(1), payout(2), payout(2), payout(1))
        daemon.caught_up()
        found = lookups_of(daemon)
        assert (found.stats.queries, len(found.cache)) == (2, 2)
        # 3 evicts 2 (the least recently used), 1 is still cached, 2 evicts 3.
        sql(db, payout(3), payout(1), payout(2))
        daemon.caught_up()
        assert (found.stats.queries, len(found.cache)) == (4, 2)
    users = [call["userId"] for call in payouts_sent(receiver)]
    assert users == [f"shop{i}.myshopify.com" for i in (1, 2, 2, 1, 3, 1, 2)]


def test_daemon_refuses_to_start_when_the_lookup_table_is_missing(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    path = rulebook(tmp_path)
    path.write_text(path.read_text().replace("public.merchants", "public.shops"))
    settings = settings_for(db, receiver, path)
    problem = "lookup 'merchant': table 'public.shops' does not exist"
    with (
        pytest.raises(RulebookError, match=re.escape(problem)),
        running_daemon(settings),
    ):
        pass


def test_daemon_refuses_to_start_when_it_may_not_read_the_lookup_table(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """Else every change of the rule would be a dead letter ("permission
    denied"): said at start, with the grant that fixes it."""
    sql(
        db,
        "create role lookup_blind login replication",
        "grant select on payouts to lookup_blind",
        f"grant create on database {psycopg.conninfo.conninfo_to_dict(db)['dbname']} "
        "to lookup_blind",
    )
    blind = psycopg.conninfo.make_conninfo(db, user="lookup_blind")
    settings = settings_for(blind, receiver, rulebook(tmp_path))
    problem = (
        "lookup 'merchant': this role may not read public.merchants; fix: "
        'GRANT SELECT ON public.merchants TO "lookup_blind";'
    )
    try:
        with (
            pytest.raises(RulebookError, match=re.escape(problem)),
            running_daemon(settings),
        ):
            pass
    finally:
        sql(db, "drop owned by lookup_blind", "drop role lookup_blind")


def test_lookup_connection_cut_holds_the_window_and_is_retried(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """A lookup that cannot run is an outage: retried after reconnecting, no letter."""
    sql(db, MERCHANT.format(id=7), MERCHANT.format(id=8))
    settings = settings_for(db, receiver, rulebook(tmp_path))
    with capture_logs() as logs, running_daemon(settings) as daemon:
        sql(db, payout(7))
        daemon.caught_up()
        sql(
            db,
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where application_name = 'cdc-tracker-lookups'",
        )
        sql(db, payout(8))
        daemon.caught_up()
    users = [call["userId"] for call in payouts_sent(receiver)]
    assert users == ["shop7.myshopify.com", "shop8.myshopify.com"]
    outages = [log for log in logs if log["event"] == "source unavailable"]
    assert [log["error"].split(":")[0] for log in outages] == [
        "lookup merchant on public.merchants could not run"
    ]
    with psycopg.connect(db) as conn:
        count = conn.execute("select count(*) from cdc_tracker.dead_letters")
        assert count.fetchone() == (0,)


# A rule without a lookup runs before the one with it: its call is made before the
# lookup's outage cuts the change short.
SEEN_FIRST = """\
version: 1
tables:
  public.payouts:
    user_id: merchant_id
    lookups:
      merchant:
        table: public.merchants
        key: {id: merchant_id}
        missing: dead_letter
track:
  - event: Payout Seen
    table: public.payouts
    on: insert
  - event: Payout Fetched
    table: public.payouts
    on: insert
    properties:
      plan: merchant.plan_name
"""


def test_a_change_cut_short_by_a_lookup_outage_leaves_no_call_behind(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """Its calls are made once, when it is read again after reconnecting."""
    sql(db, MERCHANT.format(id=7), MERCHANT.format(id=8))
    path = tmp_path / "rulebook.yaml"
    path.write_text(SEEN_FIRST)
    with capture_logs() as logs, running_daemon(settings_for(db, receiver, path)) as d:
        sql(db, payout(7))
        d.caught_up()
        sql(
            db,
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where application_name = 'cdc-tracker-lookups'",
        )
        sql(db, payout(8))
        d.caught_up()
        counted = dict(d.daemon.counters.calls_by_event)
    assert [log for log in logs if log["event"] == "source unavailable"]
    sent = [(call.event, call.user_id) for call in receiver.calls]
    assert sent == [
        ("Payout Seen", "7"),
        ("Payout Fetched", "7"),
        ("Payout Seen", "8"),
        ("Payout Fetched", "8"),
    ]
    assert counted == {("track", "Payout Seen"): 2, ("track", "Payout Fetched"): 2}
