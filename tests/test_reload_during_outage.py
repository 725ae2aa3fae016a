"""A rulebook reload asked for while a delivery waits out a destination outage is
answered at once: a broken edit refused, a valid one loaded and applied between
windows, once the batches in flight are delivered."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from cdc_tracker.daemon import window
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import EXAMPLES, running_daemon, settings_for, sql, wait_until
from tests.test_health_and_reload import EXTRA_RULE, INSERT, _metric, serving

REFUSED = "rulebook reload refused; keeping the previous rules"
LOADED = "rulebook loaded; applies once the batches in flight are delivered"


def _copy_rulebook(tmp_path: Path) -> Path:
    target = tmp_path / "rulebook.yaml"
    shutil.copy(EXAMPLES / "rulebook.yaml", target)
    return target


def _broken(rulebook: Path) -> int:
    """Break the payouts rule's condition; the line it is on."""
    lines = rulebook.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if "status == 'paid'" in line)
    lines[at] = lines[at].replace("'paid'", "'paid' and")
    rulebook.write_text("".join(lines))
    return at + 1


def test_a_broken_edit_during_an_outage_is_refused_at_once(
    db: str, receiver: FakeRudderStack, tmp_path: Path
) -> None:
    """SIGHUP while delivery retries 503s: refused within seconds, with file and
    line, and counted on /metrics; once the destination is back every call is
    delivered once."""
    rulebook = _copy_rulebook(tmp_path)
    with (
        capture_logs() as logs,
        running_daemon(settings_for(db, receiver, rulebook)) as daemon,
        serving(daemon) as url,
    ):
        sql(db, INSERT.format("a"))
        daemon.caught_up()
        receiver.fail_for(60, status=503)
        sql(db, "update merchants set owner_name = 'Bea'")
        wait_until(lambda: 503 in receiver.statuses(), 10)  # delivery is held
        line = _broken(rulebook)
        asked = time.monotonic()
        daemon.daemon.watcher.requested.set()  # what SIGHUP does
        wait_until(lambda: daemon.daemon.counters.reload_failures == 1, 5)
        waited = time.monotonic() - asked
        metrics = httpx.get(f"{url}/metrics").text
        held = len(receiver.calls)
        receiver.fail_for(0)
        daemon.caught_up()
    assert waited < 2.5
    failed = 'cdc_tracker_rulebook_reloads_total{result="failed"}'
    assert _metric(metrics, failed) == 1
    assert held == 2  # the insert's calls only: the outage was still on
    refusals = [e for e in logs if e["event"] == REFUSED]
    assert len(refusals) == 1
    assert refusals[0]["path"] == str(rulebook)
    assert refusals[0]["problems"].startswith(f"{rulebook}:{line}: ")
    ids = receiver.message_ids()
    assert len(ids) == len(set(ids)) == 3  # identify + installed, then identify


@pytest.mark.parametrize("stream_closed", [False, True], ids=["open", "closed"])
def test_a_valid_edit_during_an_outage_applies_once_delivery_is_over(
    db: str,
    receiver: FakeRudderStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stream_closed: bool,
) -> None:
    """Loaded and said at once; the change in flight keeps the rules it was
    mapped with, and the first change read after delivery gets the new ones.
    (A long outage closes the stream first: RELEASE_SECONDS, 0.5 s here.)"""
    monkeypatch.setattr(window, "RELEASE_SECONDS", 0.5 if stream_closed else 60.0)
    rulebook = _copy_rulebook(tmp_path)
    with (
        capture_logs() as logs,
        running_daemon(settings_for(db, receiver, rulebook)) as daemon,
    ):
        counters = daemon.daemon.counters
        sql(db, INSERT.format("a"))
        daemon.caught_up()
        receiver.fail_for(60, status=503)
        sql(db, "update merchants set owner_name = 'Bea'")
        wait_until(lambda: 503 in receiver.statuses(), 10)
        stream = daemon.daemon.window.stream
        assert stream is not None
        wait_until(lambda: stream.is_open != stream_closed, 10)
        rulebook.write_text(rulebook.read_text() + EXTRA_RULE)
        daemon.daemon.watcher.requested.set()
        wait_until(lambda: any(e["event"] == LOADED for e in logs), 2.5)
        assert counters.reloads == 0  # not applied while the batch is in flight
        sql(db, "update merchants set owner_name = 'Cy'")
        receiver.fail_for(0)
        wait_until(lambda: counters.reloads == 1, 10)
        daemon.caught_up()
    events = [c.payload.get("event") for c in receiver.calls]
    assert (
        events.count("Merchant Renamed") == 1
    )  # Cy's, not Bea's: mapped before the reload
    ids = receiver.message_ids()
    assert len(ids) == len(set(ids)) == 5  # 2 of the insert, 1 of Bea, 2 of Cy
    assert [
        e["event"] for e in logs if e["event"] in (LOADED, "rulebook reloaded")
    ] == [
        LOADED,
        "rulebook reloaded",
    ]
