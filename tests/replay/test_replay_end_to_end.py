"""Replay end to end on the real server and the strict fake: counts, ids, safety."""

from __future__ import annotations

import io
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from structlog.testing import capture_logs

from cdc_tracker.mapping import ids
from cdc_tracker.replay.main import run_replay
from cdc_tracker.replay.runner import ReplayOptions
from cdc_tracker.settings import Settings
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import (
    retry_all_letters,
    running_daemon,
    settings_for,
    slot_position,
    sql,
)

PAYOUTS = 100_000
MERCHANTS = 1_000


def _fill(dsn: str) -> None:
    """Merchants and payouts spread over the last days; a third of payouts unpaid."""
    sql(
        dsn,
        "insert into merchants (shop_domain, owner_name, plan_name, currency,"
        " current_monthly_total, updated_at) select 's' || g || '.myshopify.com',"
        " 'Owner ' || g, 'basic', 'EUR', g * 1.10,"
        " now() - interval '1 minute' * g from generate_series(1, 1000) g",
        "insert into payouts (merchant_id, amount, currency, status, created_at)"
        " select 1 + g % 1000, g * 0.01, 'EUR',"
        " case when g % 3 = 0 then 'pending' else 'paid' end,"
        " now() - interval '1 second' * g from generate_series(1, 100000) g",
        "create index on payouts (created_at, id)",
        "create index on merchants (updated_at, id)",
    )


def _replay(settings: Settings, **options: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_replay(
        settings,
        ReplayOptions(**options),
        threading.Event(),
        out=out,
        err=err,  # type: ignore[arg-type]
    )
    return code, out.getvalue(), err.getvalue()


def _namespace(settings: Settings) -> str:
    return f"{conninfo_to_dict(settings.dsn)['dbname']}/{settings.slot}"


def test_replay_of_100000_rows_sends_exact_calls_with_the_live_insert_ids(
    db: str, example_rulebook: Path
) -> None:
    _fill(db)
    with FakeRudderStack(write_keys=["k"]) as receiver:
        settings = settings_for(db, receiver, example_rulebook, write_key="k")
        code, _, err = _replay(settings, since="30d")
        calls = receiver.calls

    paid = PAYOUTS - PAYOUTS // 3
    assert code == 0, err
    assert len(calls) == paid + 2 * MERCHANTS
    assert len({call.message_id for call in calls}) == len(calls)
    namespace = _namespace(settings)
    fetched = {
        call.message_id
        for call in calls
        if call.payload.get("event") == "Payout Fetched"
    }
    expected = {
        ids.insert_id(namespace, "Payout Fetched", [n])
        for n in range(1, PAYOUTS + 1)
        if n % 3 != 0
    }
    assert fetched == expected
    installed = {
        call.message_id
        for call in calls
        if call.payload.get("event") == "Merchant Installed"
    }
    assert installed == {
        ids.insert_id(namespace, "Merchant Installed", [n])
        for n in range(1, MERCHANTS + 1)
    }
    assert f"replayed {PAYOUTS + MERCHANTS:,} rows" in err


def test_each_call_is_stamped_with_its_rows_cursor_and_the_window_holds(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    sql(
        db,
        "insert into merchants (shop_domain, updated_at) values"
        " ('old.myshopify.com', '2026-10-01 12:00:00+00'),"
        " ('in.myshopify.com', '2026-11-03 08:30:00.25+01'),"
        " ('late.myshopify.com', '2026-11-20 00:00:00+00')",
    )
    settings = settings_for(db, receiver, example_rulebook)

    code, _, _ = _replay(
        settings,
        since="2026-11-01",
        until="2026-11-10",
        tables=("merchants",),
        rules=("Merchant Installed",),
    )

    assert code == 0
    (call,) = receiver.calls
    assert call.payload["timestamp"] == "2026-11-03T07:30:00.250Z"
    assert call.payload["originalTimestamp"] == "2026-11-03T07:30:00.250Z"
    assert call.user_id == "2"


def test_dry_run_prints_json_lines_and_sends_nothing(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    sql(db, "insert into merchants (shop_domain) values ('a'), ('b')")
    settings = settings_for(db, receiver, example_rulebook)

    code, out, err = _replay(settings, since="1h", dry_run=True)

    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 4
    assert all(line.startswith('{"type":') for line in lines)
    assert receiver.calls == []
    with psycopg.connect(db) as conn:
        row = conn.execute("select to_regclass('cdc_tracker.replay_state')").fetchone()
    assert row == (None,)
    assert "skipped rule 'Plan Changed'" in err


def test_a_dry_run_is_not_paced_by_rate(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """``--rate`` spares a destination; a dry run prints its calls at once
    (paced, these 40 calls at one a minute would take 40 minutes: the run is
    stopped after 20 s, with what it printed by then)."""
    twenty = "select 's' || g from generate_series(1, 20) g"
    sql(db, f"insert into merchants (shop_domain) {twenty}")
    settings = settings_for(db, receiver, example_rulebook)
    stop = threading.Event()
    timer = threading.Timer(20, stop.set)
    timer.start()
    out = io.StringIO()
    try:
        code = run_replay(
            settings,
            ReplayOptions(since="1h", dry_run=True, rate=1 / 60),
            stop,
            out=out,
            err=io.StringIO(),
        )
    finally:
        timer.cancel()

    assert code == 0
    assert len(out.getvalue().splitlines()) == 40
    assert receiver.calls == []


def test_replay_beside_the_live_daemon_resends_no_event_and_rows_as_they_are(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Track calls keep the live ids; an identify carries its traits in its id:
    sent once more by the first replay, then again only for a row that changed."""
    settings = settings_for(db, receiver, example_rulebook)

    def replay() -> dict[str, set[str]]:
        before = len(receiver.calls)
        code, _, _ = _replay(settings, since="1h")
        assert code == 0
        made: dict[str, set[str]] = {"identify": set(), "track": set()}
        for call in receiver.calls[before:]:
            made[call.payload["type"]].add(call.message_id)
        return made

    with running_daemon(settings) as daemon:
        sql(
            db,
            "insert into merchants (shop_domain, plan_name) select"
            " 's' || g, 'basic' from generate_series(1, 300) g",
            "insert into payouts (merchant_id, amount, currency, status)"
            " select 1 + g % 300, 9.99, 'EUR', 'paid' from generate_series(1, 500) g",
        )
        daemon.caught_up()
        live = set(receiver.message_ids())
        first = replay()
        sql(db, "update merchants set plan_name = 'pro' where id = 7")
        daemon.caught_up()  # the daemon goes on undisturbed
        second = replay()
        # Changed back, as the first replay sent it: the destination holds 'pro'
        # meanwhile, so the row must be sent again, not dropped as a repeat.
        sql(
            db,
            "update merchants set plan_name = 'basic', updated_at = now() where id = 7",
        )
        daemon.caught_up()
        third = replay()

    assert len(live) == 2 * 300 + 500
    assert len(first["track"]) == 300 + 500
    assert first["track"] <= live
    assert len(first["identify"]) == 300
    assert not first["identify"] & live
    assert second["track"] == first["track"]
    assert len(second["identify"] - first["identify"]) == 1
    assert len(third["identify"] - first["identify"] - second["identify"]) == 1


def test_replay_leaves_the_slot_where_it_was(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    settings = settings_for(db, receiver, example_rulebook)
    with running_daemon(settings) as daemon:
        sql(db, "insert into merchants (shop_domain) values ('a'), ('b')")
        daemon.caught_up()
    before = slot_position(db)

    code, _, _ = _replay(settings, since="1h")

    assert code == 0
    assert len(receiver.calls) == 8
    assert slot_position(db) == before


def test_rows_a_rule_cannot_map_become_dead_letters_and_the_rest_goes_on(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(
        "version: 1\ntables:\n  public.merchants:\n    user_id: email\n"
        "    cursor: updated_at\ntrack:\n  - event: Merchant Installed\n"
        "    table: public.merchants\n    on: insert\n"
    )
    sql(
        db,
        "insert into merchants (shop_domain, email) values"
        " ('a', 'a@x.io'), ('b', null), ('c', 'c@x.io')",
    )
    settings = settings_for(db, receiver, rulebook)

    code, _, err = _replay(settings, since="1h")

    assert code == 0
    assert [call.user_id for call in receiver.calls] == ["a@x.io", "c@x.io"]
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "select slot, table_name, rule, reason, change->'new'->>'shop_domain'"
            " from cdc_tracker.dead_letters"
        ).fetchall()
    assert rows == [
        (
            settings.slot,
            "public.merchants",
            "Merchant Installed",
            "user_id (email) is null or empty",
            "b",
        )
    ]
    assert "1 dead letter " in err


_POSITION_BOOK = """\
version: 1
tables:
  public.merchants:
    user_id: {user_id}
    cursor: updated_at
    insert_ids: position
track:
  - event: Merchant Installed
    table: public.merchants
    on: insert
"""


def test_retried_replay_letters_get_the_ids_a_replay_of_their_rows_gives(
    db: str, receiver: FakeRudderStack, tmp_path: Path, monkeypatch: Any
) -> None:
    # Two replays each leave a letter (no email). Both are stored without a WAL
    # position, as row 1 of their run: the retry must not name them by that.
    broken = tmp_path / "broken.yaml"
    broken.write_text(_POSITION_BOOK.format(user_id="email"))
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(
        _POSITION_BOOK.format(user_id="\"coalesce(email, concat('s:', shop_domain))\"")
    )
    sql(
        db,
        "insert into merchants (shop_domain, updated_at) values"
        " ('a', now() - interval '2 days'), ('b', now() - interval '1 hour')",
    )
    settings = settings_for(db, receiver, broken)
    assert _replay(settings, since="3d", until="1d")[0] == 0
    assert _replay(settings, since="1d")[0] == 0

    assert retry_all_letters(replace(settings, rulebook=fixed), monkeypatch) == 0
    retried = {call.user_id: call.message_id for call in receiver.calls}
    receiver.reset()
    assert _replay(replace(settings, rulebook=fixed), since="3d")[0] == 0
    replayed = {call.user_id: call.message_id for call in receiver.calls}

    assert sorted(retried) == ["s:a", "s:b"]
    assert retried == replayed


def test_rows_with_a_null_cursor_are_counted_and_named_as_not_replayed(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    sql(
        db,
        "insert into merchants (shop_domain, updated_at) values ('dated', now()),"
        " ('undated', null), ('undated too', null)",
    )
    settings = settings_for(db, receiver, example_rulebook)

    with capture_logs() as logs:
        code, _, _ = _replay(settings, since="1d", tables=("public.merchants",))

    assert code == 0
    assert {call.user_id for call in receiver.calls} == {"1"}
    [warning] = [line for line in logs if "null cursor" in line["event"]]
    assert warning["table"] == "public.merchants"
    assert warning["column"] == "updated_at"
    assert warning["rows"] == 2


def test_replay_enriches_calls_through_lookups_like_the_live_daemon(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """A rule reading merchant.shop_domain gets it in replay too, same ids as live."""
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(
        "version: 1\n"
        "tables:\n"
        "  public.payouts:\n"
        "    user_id: merchant.shop_domain\n"
        "    cursor: created_at\n"
        "    lookups:\n"
        "      merchant:\n"
        "        table: public.merchants\n"
        "        key: {id: merchant_id}\n"
        "track:\n"
        "  - event: Payout Fetched\n"
        "    table: public.payouts\n"
        "    on: insert\n"
        "    properties:\n"
        "      plan: merchant.plan_name\n"
    )
    sql(
        db,
        "insert into merchants (shop_domain, plan_name) values ('a.shop', 'pro')",
        "insert into payouts (merchant_id, amount, currency, status)"
        " values (1, 5, 'EUR', 'paid'), (1, 6, 'EUR', 'paid')",
    )
    settings = settings_for(db, receiver, rulebook)

    code, _, _ = _replay(settings, since="1h")

    assert code == 0
    payloads = [call.payload for call in receiver.calls]
    assert [p["userId"] for p in payloads] == ["a.shop", "a.shop"]
    assert [p["properties"] for p in payloads] == [{"plan": "pro"}, {"plan": "pro"}]
    expected = {
        ids.insert_id(_namespace(settings), "Payout Fetched", [key]) for key in (1, 2)
    }
    assert set(receiver.message_ids()) == expected
