"""Health, readiness and metrics endpoints; the rulebook reloaded without a restart."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from cdc_tracker.daemon.reload import RulebookWatcher
from cdc_tracker.ops.health import HealthServer, Probe
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import Running, running_daemon, settings_for, sql, wait_until

INSERT = (
    "insert into merchants (shop_domain, owner_name, plan_name) "
    "values ('{0}.myshopify.com', 'Ada', 'basic')"
)

EXTRA_RULE = """
  - event: Merchant Renamed
    table: public.merchants
    on: update
    when: changed(owner_name)
"""


@contextmanager
def serving(daemon: Running, stall_seconds: float = 60) -> Iterator[str]:
    assert daemon.client is not None
    probe = Probe(
        daemon.daemon.counters,
        daemon.client.stats,
        active=lambda: daemon.daemon.slot is not None,
        stall_seconds=stall_seconds,
    )
    server = HealthServer("127.0.0.1:0", probe).start()
    try:
        yield f"http://{server.address}"
    finally:
        server.stop()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.split(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_health_ready_and_metrics_move_with_the_pipeline(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """Counters, the delay histogram and destination errors move as work happens."""
    with (
        running_daemon(settings_for(db, receiver, example_rulebook)) as daemon,
        serving(daemon) as url,
    ):
        assert httpx.get(f"{url}/healthz").status_code == 200
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 10)
        receiver.fail_next(1, status=503)
        sql(db, INSERT.format("a"))
        daemon.caught_up()
        text = httpx.get(f"{url}/metrics").text
    assert _metric(text, "cdc_tracker_changes_read_total") == 1
    assert (
        'cdc_tracker_calls_shipped_total{event="Merchant Installed",type="track"} 1.0'
        in text
    )
    assert 'cdc_tracker_calls_shipped_total{event="",type="identify"} 1.0' in text
    assert _metric(text, "cdc_tracker_batches_total") == 1
    assert _metric(text, "cdc_tracker_retries_total") == 1
    assert 'cdc_tracker_destination_errors_total{status="503"} 1.0' in text
    assert _metric(text, "cdc_tracker_delivery_delay_seconds_count") == 1
    assert 'cdc_tracker_delivery_delay_seconds_bucket{le="+Inf"} 1.0' in text
    assert _metric(text, "cdc_tracker_slot_lag_bytes") >= 0


def test_read_ahead_bytes_show_rows_held_while_delivery_waits(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """During an outage the reading thread fills its bound, and /metrics says how
    full it is; once delivered, nothing is held."""
    settings = settings_for(db, receiver, example_rulebook, read_ahead_mb=1)
    with running_daemon(settings) as daemon, serving(daemon) as url:
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 10)
        receiver.fail_for(30)
        sql(
            db,
            "insert into merchants (shop_domain, owner_name) select "
            "'s' || g || '.myshopify.com', repeat('x', 200) from "
            "generate_series(1, 20000) g",
        )

        def held() -> float:
            text = httpx.get(f"{url}/metrics").text
            return _metric(text, "cdc_tracker_read_ahead_bytes")

        wait_until(lambda: held() > 900_000, 20)
        during = held()
        receiver.fail_for(0)
        daemon.caught_up(timeout=60)
        after = held()
    assert 900_000 < during < (1 << 20) + 2_000  # the bound, and one row past it
    assert after == 0
    assert len(receiver.message_ids()) == 40_000


def test_readiness_fails_while_the_write_key_is_refused(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """A refused key pauses delivery: /readyz answers 503 and says why."""
    with (
        running_daemon(settings_for(db, receiver, example_rulebook)) as daemon,
        serving(daemon) as url,
    ):
        receiver.write_keys.clear()
        sql(db, INSERT.format("a"))
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 503, 10)
        assert "write key" in httpx.get(f"{url}/readyz").text
        receiver.write_keys.add("test-write-key")
        daemon.caught_up()
        assert httpx.get(f"{url}/readyz").status_code == 200
    assert len(receiver.calls) == 2


def test_readiness_reports_a_stall(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """No progress for longer than stall_seconds makes the daemon not ready."""
    with (
        running_daemon(settings_for(db, receiver, example_rulebook)) as daemon,
        serving(daemon, stall_seconds=0.5) as url,
    ):
        receiver.fail_for(30, status=503)
        sql(db, INSERT.format("a"))
        wait_until(lambda: "no progress" in httpx.get(f"{url}/readyz").text, 10)
        receiver.fail_for(0)
        daemon.caught_up()


def _copy_rulebook(example: Path, tmp_path: Path) -> Path:
    target = tmp_path / "rulebook.yaml"
    shutil.copy(example, target)
    return target


def test_edited_rulebook_applies_from_the_next_change(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, tmp_path: Path
) -> None:
    """A valid edit is picked up without a restart; a broken one is refused."""
    rulebook = _copy_rulebook(example_rulebook, tmp_path)
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        sql(db, INSERT.format("a"), "update merchants set owner_name = 'Bea'")
        daemon.caught_up()
        rulebook.write_text(rulebook.read_text() + EXTRA_RULE)
        wait_until(lambda: daemon.daemon.counters.reloads == 1, 10)
        sql(db, "update merchants set owner_name = 'Cy'")
        daemon.caught_up()
        rulebook.write_text(rulebook.read_text() + "  - event: [broken\n")
        wait_until(lambda: daemon.daemon.counters.reload_failures == 1, 10)
        sql(db, "update merchants set owner_name = 'Di'")
        daemon.caught_up()
    renamed = [
        c for c in receiver.calls if c.payload.get("event") == "Merchant Renamed"
    ]
    assert len(renamed) == 2  # Cy and Di, not Bea (before the edit)


def test_a_reload_that_drops_a_gone_table_is_ready_at_once(
    db: str,
    receiver: FakeRudderStack,
    example_rulebook: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rulebook put right clears readiness with the reload, not at the next
    periodic look at the tables."""
    rulebook = _copy_rulebook(example_rulebook, tmp_path)
    monkeypatch.setattr("cdc_tracker.daemon.loop.TABLE_CHECK_SECONDS", 0.05)
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        counters = daemon.daemon.counters
        sql(db, "alter table payouts rename to payouts_archive")
        wait_until(lambda: counters.missing_tables == ["public.payouts"], 10)
        monkeypatch.setattr("cdc_tracker.daemon.loop.TABLE_CHECK_SECONDS", 3600.0)
        text = rulebook.read_text()
        without_payouts = text[: text.index("  - event: Payout Fetched")]
        without_payouts = without_payouts.replace(
            "  public.payouts:\n    user_id: merchant_id\n    cursor: created_at\n", ""
        )
        rulebook.write_text(without_payouts)
        wait_until(lambda: counters.reloads == 1, 10)
        assert counters.missing_tables == []
        assert counters.schema_problems == []


def test_an_edit_refused_for_the_schema_is_taken_once_the_schema_is_put_right(
    db: str,
    receiver: FakeRudderStack,
    example_rulebook: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The file is not edited again: the daemon tries the refused edit again."""
    rulebook = _copy_rulebook(example_rulebook, tmp_path)
    monkeypatch.setattr("cdc_tracker.daemon.loop.TABLE_CHECK_SECONDS", 0.05)
    with running_daemon(settings_for(db, receiver, rulebook)) as daemon:
        counters = daemon.daemon.counters
        sql(db, "alter table merchants replica identity nothing")
        rulebook.write_text(rulebook.read_text() + EXTRA_RULE)
        wait_until(lambda: counters.reload_failures >= 1, 10)
        time.sleep(0.5)  # about ten retries, refused for the same reasons
        assert (counters.reload_failures, counters.reloads) == (1, 0)
        sql(db, "alter table merchants replica identity full")
        wait_until(lambda: counters.reloads == 1, 10)
        sql(db, INSERT.format("a"), "update merchants set owner_name = 'Bea'")
        daemon.caught_up()
    events = [c.payload.get("event") for c in receiver.calls]
    assert "Merchant Renamed" in events


def test_a_reload_warns_of_large_values_a_new_update_rule_may_leave_out(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """The warning given at start is given for what an edit adds, once."""
    sql(db, "create table notes (id bigint primary key, body text)")
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text("version: 1\ntables:\n  public.notes:\n    user_id: id\n")
    with (
        capture_logs() as logs,
        running_daemon(settings_for(db, receiver, rulebook)) as daemon,
    ):
        rulebook.write_text(
            rulebook.read_text()
            + "identify:\n  - table: public.notes\n    on: update\n"
            "    traits: {body: body}\n"
        )
        wait_until(lambda: daemon.daemon.counters.reloads == 1, 10)
        rulebook.write_text(rulebook.read_text() + "# touched\n")
        wait_until(lambda: daemon.daemon.counters.reloads == 2, 10)
    warnings = [
        e for e in logs if e["event"] == "large values may be left out of update calls"
    ]
    assert [(e["table"], e["columns"]) for e in warnings] == [
        ("public.notes", ["body"])
    ]
    assert warnings[0]["hint"] == (
        "keep them with ALTER TABLE public.notes REPLICA IDENTITY FULL;"
    )


def test_configmap_style_symlink_swap_reloads(
    db: str, receiver: FakeRudderStack, example_rulebook: Path, tmp_path: Path
) -> None:
    """Kubernetes swaps a ..data symlink: the new file behind the same path is used."""
    config = tmp_path / "config"
    first, second = config / "..2026_12_04_a", config / "..2026_12_04_b"
    first.mkdir(parents=True)
    second.mkdir()
    shutil.copy(example_rulebook, first / "rulebook.yaml")
    (second / "rulebook.yaml").write_text(example_rulebook.read_text() + EXTRA_RULE)
    os.symlink(first.name, config / "..data")
    os.symlink("..data/rulebook.yaml", config / "rulebook.yaml")
    with running_daemon(settings_for(db, receiver, config / "rulebook.yaml")) as daemon:
        sql(db, INSERT.format("a"))
        daemon.caught_up()
        os.symlink(second.name, config / "..data_tmp")
        os.replace(config / "..data_tmp", config / "..data")  # atomic, like kubelet
        wait_until(lambda: daemon.daemon.counters.reloads == 1, 10)
        sql(db, "update merchants set owner_name = 'Cy'")
        daemon.caught_up()
    assert any(c.payload.get("event") == "Merchant Renamed" for c in receiver.calls)


def test_a_deleted_rulebook_is_said_once_and_its_return_reloads(tmp_path: Path) -> None:
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text("version: 1\n")
    watcher = RulebookWatcher(rulebook, interval=0)
    with capture_logs() as logs:
        rulebook.unlink()
        changed = [watcher.due() for _ in range(4)]
        rulebook.write_text("version: 1\ntables: {}\n")
        changed.append(watcher.due())
    assert changed == [False, False, False, False, True]
    assert [entry["event"] for entry in logs] == [
        "rulebook file is missing; the rules loaded last stay in force",
        "rulebook file is back",
    ]


def test_the_slot_lag_grows_while_an_outage_holds_delivery(
    db: str, receiver: FakeRudderStack, example_rulebook: Path
) -> None:
    """The WAL piles up during an outage: that is when the lag must show it."""
    settings = settings_for(db, receiver, example_rulebook)
    with running_daemon(settings) as daemon:
        daemon.caught_up()
        receiver.fail_for(60, status=503)
        sql(db, "insert into merchants (shop_domain) values ('waiting')")
        wait_until(lambda: receiver.requests, 10)  # delivery is now held
        sql(
            db,
            "create table filler (x text)",
            "insert into filler select repeat('x', 1000) from generate_series(1, 8000)",
        )
        counters = daemon.daemon.counters
        wait_until(lambda: counters.lag_bytes > 8_000_000, 20)
        receiver.fail_for(0)
        daemon.caught_up()
