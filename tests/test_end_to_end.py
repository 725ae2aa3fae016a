"""The example rulebook end to end: real WAL -> real daemon -> strict fake receiver."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import running_daemon, settings_for, slot_position, sql, transaction

INSERT_ALPACA = (
    "insert into merchants (shop_domain, owner_name, email, plan_name, currency, "
    "current_monthly_total, last_payout_fetch) values ('alpaca.myshopify.com', "
    "'Ada', 'ada@alpaca.example', 'basic', 'EUR', 1234567890.12, "
    "'2026-11-30 10:00:00.123456+00')"
)


def _by_event(receiver: FakeRudderStack) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for call in receiver.calls:
        payload = call.exact_payload()
        out.setdefault(payload.get("event") or payload["type"], []).append(payload)
    return out


def test_insert_makes_identify_with_traits_and_merchant_installed(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """An insert into merchants gives an identify with every trait and an event."""
    with running_daemon(settings_for(db, receiver, example_rulebook)) as daemon:
        sql(db, INSERT_ALPACA)
        daemon.caught_up()
    calls = _by_event(receiver)
    assert sorted(calls) == ["Merchant Installed", "identify"]
    identify = calls["identify"][0]
    assert identify["userId"] == "1"
    assert identify["traits"] == {
        "name": "Ada",
        "email": "ada@alpaca.example",
        "company": {"plan": "basic"},
        "currentMonthlyTotal": Decimal("1234567890.12"),
        "canBackdate": False,
        "onboardingCompleted": False,
        "lastPayoutFetch": "2026-11-30T10:00:00.123456Z",
        "currency": "EUR",
        "xero_connection_ok": False,
    }
    assert identify["context"]["traits"] == identify["traits"]
    assert identify["context"]["library"]["name"] == "cdc-tracker"
    installed = calls["Merchant Installed"][0]
    assert installed["properties"] == {"plan": "basic", "source": "shopify"}
    assert installed["userId"] == "1"


def test_numeric_keeps_its_exact_digits_and_scale_on_the_wire(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """numeric(12,2) 1234567890.10 arrives as the bare JSON number 1234567890.10."""
    with running_daemon(settings_for(db, receiver, example_rulebook)) as daemon:
        sql(db, INSERT_ALPACA.replace("1234567890.12", "1234567890.10"))
        daemon.caught_up()
    raw = b"".join(call.raw for call in receiver.calls if b'"identify"' in call.raw)
    assert b'"currentMonthlyTotal":1234567890.10' in raw


def test_timestamp_is_the_commit_time_not_the_shipping_time(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Every call's timestamp is its transaction's commit time, UTC, ms and Z."""
    with running_daemon(settings_for(db, receiver, example_rulebook)) as daemon:
        sql(db, INSERT_ALPACA)
        daemon.caught_up()
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "select to_char(pg_xact_commit_timestamp(xmin) at time zone 'UTC', "
            '\'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\') from merchants'
        ).fetchone()
    stamps = {call.payload["timestamp"] for call in receiver.calls}
    assert len(stamps) == 1
    stamp = stamps.pop()
    assert stamp.endswith("Z")
    assert len(stamp) == len("2026-12-04T16:42:12.123Z")
    assert all(call.payload["originalTimestamp"] == stamp for call in receiver.calls)
    assert row is not None
    assert stamp == row[0]


def test_plan_change_sends_from_and_to(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """changed(plan_name) fires Plan Changed with old and new; other updates do not."""
    sql(db, INSERT_ALPACA)
    with running_daemon(settings_for(db, receiver, example_rulebook)) as daemon:
        sql(
            db,
            "update merchants set owner_name = 'Ada P.'",
            "update merchants set plan_name = 'pro'",
        )
        daemon.caught_up()
    calls = _by_event(receiver)
    assert [c["properties"] for c in calls["Plan Changed"]] == [
        {"from": "basic", "to": "pro"}
    ]
    assert len(calls["identify"]) == 2
    assert "Merchant Installed" not in calls


def test_xero_connection_lost_only_on_true_to_false(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """old.xero_connection_ok and not new.xero_connection_ok: only the drop fires."""
    sql(db, INSERT_ALPACA)
    with running_daemon(settings_for(db, receiver, example_rulebook)) as daemon:
        sql(
            db,
            "update merchants set xero_connection_ok = true",
            "update merchants set xero_connection_ok = false",
            "update merchants set xero_connection_ok = false",
        )
        daemon.caught_up()
    calls = _by_event(receiver)
    assert len(calls["Xero Connection Lost"]) == 1
    assert calls["Xero Connection Lost"][0]["properties"] == {}


def test_payout_fetched_only_for_paid_payouts(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """status == 'paid' gates the event; currency loses its char(3) padding."""
    sql(db, INSERT_ALPACA)
    with running_daemon(settings_for(db, receiver, example_rulebook)) as daemon:
        sql(
            db,
            "insert into payouts (merchant_id, amount, currency, status) values "
            "(1, 10.50, 'EU', 'paid'), (1, 99.00, 'USD', 'pending')",
        )
        daemon.caught_up()
    calls = _by_event(receiver)
    assert [c["properties"] for c in calls["Payout Fetched"]] == [
        {"amount": Decimal("10.50"), "currency": "EU"}
    ]
    assert calls["Payout Fetched"][0]["userId"] == "1"


def test_rolled_back_transaction_sends_nothing(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Only committed work reaches the destination."""
    with running_daemon(settings_for(db, receiver, example_rulebook)) as daemon:
        with psycopg.connect(db) as conn:
            conn.execute(INSERT_ALPACA)
            conn.rollback()
        daemon.caught_up()
    assert receiver.calls == []


def test_multi_statement_transaction_keeps_its_order(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Calls of one transaction arrive in statement order, all with one timestamp."""
    with running_daemon(settings_for(db, receiver, example_rulebook)) as daemon:
        transaction(
            db,
            INSERT_ALPACA,
            "update merchants set plan_name = 'pro'",
            "insert into payouts (merchant_id, amount, currency, status) "
            "values (1, 1, 'EUR', 'paid')",
            "update merchants set plan_name = 'plus'",
        )
        daemon.caught_up()
    names = [c.payload.get("event") or c.payload["type"] for c in receiver.calls]
    assert names == [
        "identify", "Merchant Installed", "identify", "Plan Changed",
        "Payout Fetched", "identify", "Plan Changed",
    ]  # fmt: skip
    assert len({c.payload["timestamp"] for c in receiver.calls}) == 1


def test_idle_tracked_tables_still_advance_the_slot(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Writes to untracked tables move the slot although no call is made."""
    sql(db, "create table audit_log (id serial primary key, note text)")
    with running_daemon(settings_for(db, receiver, example_rulebook)) as daemon:
        before = slot_position(db)
        for _ in range(5):
            sql(db, "insert into audit_log (note) values ('x')")
        reached = daemon.caught_up()
        daemon.stop()
    assert receiver.calls == []
    assert slot_position(db) >= reached > before


def test_a_when_comparing_a_timestamp_with_a_date_written_as_text(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """``created_at >= '2026-06-01'`` fires for the rows from then on; a time
    written without an offset is in UTC, the zone timestamptz values arrive in."""
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(
        "version: 1\n"
        "tables:\n"
        "  public.payouts: {user_id: merchant_id}\n"
        "track:\n"
        "  - event: Recent Payout\n"
        "    table: public.payouts\n"
        "    on: insert\n"
        "    when: created_at >= '2026-06-01' and '2026-06-02 12:00' > created_at\n"
        "    properties: {amount: amount}\n"
    )
    sql(
        db,
        "insert into merchants (shop_domain) values ('a.myshopify.com')",
    )
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        sql(
            db,
            "insert into payouts (merchant_id, amount, currency, status, created_at) "
            "select 1, n, 'EUR', 'paid', t from (values "
            "(1, timestamptz '2026-05-31 23:59:59.999+00'), "
            "(2, timestamptz '2026-06-01 00:00:00+00'), "
            "(3, timestamptz '2026-06-02 13:59:59+02'), "
            "(4, timestamptz '2026-06-02 12:00:00+00')) as v(n, t)",
        )
        daemon.caught_up()
    amounts = sorted(
        call.exact_payload()["properties"]["amount"] for call in receiver.calls
    )
    assert amounts == [Decimal(2), Decimal(3)]
