"""The replay's small parts: window parsing, pacing, progress, the plan."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from cdc_tracker.errors import ConfigError
from cdc_tracker.model import Call, Lsn
from cdc_tracker.replay.pacing import Pacer
from cdc_tracker.replay.plan import make_plan
from cdc_tracker.replay.progress import Progress
from cdc_tracker.replay.window import Window, make_window, parse_moment
from cdc_tracker.rules.rulebook import load_rulebook

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", NOW - timedelta(days=7)),
        ("12h", NOW - timedelta(hours=12)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T08:00+01:00", datetime(2026, 11, 1, 7, tzinfo=UTC)),
    ],
)
def test_since_takes_an_iso_time_or_an_age(text: str, expected: datetime) -> None:
    assert parse_moment("--since", text, NOW) == expected


def test_a_future_since_is_refused() -> None:
    with pytest.raises(ConfigError, match="in the future"):
        make_window("2026-12-05", None, NOW)


def test_bounds_of_a_zone_less_cursor_are_wall_clock_times_in_the_rulebook_zone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rulebook.yaml"
    path.write_text(
        "version: 1\ntimezone: Europe/Paris\ntables:\n"
        "  public.merchants:\n    user_id: id\n"
    )
    window = Window(datetime(2026, 11, 1, tzinfo=UTC), NOW)
    paris = load_rulebook(path).timezone

    since, _ = window.bounds_for("timestamp without time zone", paris)

    # 01:00 in Paris, widened by 3 h: where clocks change, rows are decided by
    # their instant (Window.holds).
    assert since == "2026-10-31T22:00:00"
    assert window.holds(datetime(2026, 11, 1, tzinfo=UTC))
    assert not window.holds(datetime(2026, 10, 31, 23, 59, tzinfo=UTC))
    assert window.bounds_for("timestamp with time zone", paris)[0] == (
        "2026-11-01T00:00:00+00:00"
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now


class _Stop(threading.Event):
    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.clock.waits.append(timeout)
        self.clock.now += timeout
        return False


def _calls(n: int) -> list[Call]:
    return [Call(f"id{i}", "u", {}, "r", Lsn(0), i) for i in range(n)]


def test_pacer_releases_a_tenth_of_a_second_of_calls_at_a_time() -> None:
    clock = _Clock()
    pacer = Pacer(100.0, 500, _Stop(clock), clock)

    chunks = list(pacer.chunks(_calls(50)))

    assert [len(chunk) for chunk in chunks] == [10] * 5
    assert clock.now == pytest.approx(0.4)


def test_pacer_without_a_rate_passes_everything_at_once() -> None:
    clock = _Clock()
    chunks = list(Pacer(None, 500, _Stop(clock), clock).chunks(_calls(1200)))

    assert [len(chunk) for chunk in chunks] == [1200]
    assert clock.waits == []


def test_pacer_stops_releasing_once_stopped() -> None:
    stop = threading.Event()
    stop.set()
    pacer = Pacer(10.0, 500, stop)

    assert [len(chunk) for chunk in pacer.chunks(_calls(5))] == [1]


def test_progress_bar_shows_rows_total_rate_and_eta() -> None:
    clock = _Clock()
    out = io.StringIO()
    progress = Progress(1000, out, clock=clock)

    clock.now = 2.0
    progress.advance(250, "public.payouts")

    line = out.getvalue()
    assert line.startswith("\rpublic.payouts")
    assert "25% 250/1,000 rows 125 rows/s ETA 0:06" in line
    assert "[######------------------]" in line


def test_progress_log_line_tells_the_tables_rows_from_those_of_every_table() -> None:
    clock = _Clock()
    progress = Progress(1000, None, log_every=1.0, clock=clock)

    with capture_logs() as logs:
        clock.now = 1.0
        progress.advance(300, "public.merchants")
        clock.now = 2.0
        progress.advance(200, "public.payouts")

    assert [log["event"] for log in logs] == ["replay progress"] * 2
    last = logs[-1]
    assert last["table"] == "public.payouts"
    assert (last["table_rows_done"], last["rows_done"]) == (200, 500)
    assert last["rows_total"] == 1000
    assert "rows" not in last


def test_plan_skips_update_only_and_old_row_rules_with_reasons() -> None:
    rulebook = load_rulebook(Path("cdc_tracker/examples/rulebook.yaml"))

    plan = make_plan(rulebook)

    assert [rule.id for rule in plan.rulebook.rules] == [
        "identify public.merchants",
        "Merchant Installed",
        "Payout Fetched",
    ]
    assert {item.rule: item.reason.split(";")[0] for item in plan.skipped} == {
        "Xero Connection Lost": "fires on update only",
        "Plan Changed": "fires on update only",
    }


def test_a_rule_reading_the_old_row_is_skipped_even_on_insert(tmp_path: Path) -> None:
    path = tmp_path / "rulebook.yaml"
    path.write_text(
        "version: 1\ntables:\n  public.merchants:\n    user_id: id\n"
        "    cursor: updated_at\ntrack:\n  - event: Plan Set\n"
        "    table: public.merchants\n    on: [insert, update]\n"
        "    when: changed(plan_name)\n  - event: Seen\n"
        "    table: public.merchants\n    on: insert\n"
    )

    plan = make_plan(load_rulebook(path))

    assert [rule.id for rule in plan.rulebook.rules] == ["Seen"]
    assert plan.skipped[0].rule == "Plan Set"
    assert "old row" in plan.skipped[0].reason


def test_the_plan_warns_that_a_positional_table_resends_shipped_events(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rulebook.yaml"
    path.write_text(
        "version: 1\ntables:\n  public.merchants:\n    user_id: id\n"
        "    cursor: updated_at\n    insert_ids: position\n"
        "  public.payouts:\n    user_id: merchant_id\n    cursor: created_at\n"
        "track:\n  - event: Seen\n    table: public.merchants\n    on: insert\n"
        "  - event: Paid\n    table: public.payouts\n    on: insert\n"
    )

    notes = [line for line in make_plan(load_rulebook(path)).report() if "note" in line]

    assert len(notes) == 1
    assert notes[0].startswith("note: public.merchants names insert calls by")
    assert "rows the daemon already shipped send their events again" in notes[0]


def test_the_plan_warns_that_an_insert_and_update_event_may_be_sent_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rulebook.yaml"
    path.write_text(
        "version: 1\ntables:\n  public.payouts:\n    user_id: merchant_id\n"
        "    cursor: created_at\ntrack:\n  - event: Paid\n    table: payouts\n"
        "    on: [insert, update]\n    when: status == 'paid'\n"
        "  - event: Seen\n    table: payouts\n    on: insert\n"
    )

    notes = [line for line in make_plan(load_rulebook(path)).report() if "note" in line]

    assert notes == [
        "note: rule 'Paid' fires on update too: a row whose event the daemon sent "
        "from an update is sent again, named as its insert's"
    ]


def test_without_table_the_rules_of_a_table_without_cursor_are_skipped(
    tmp_path: Path,
) -> None:
    """The backfill the lost-slot hint gives runs for the tables it can."""
    path = tmp_path / "rulebook.yaml"
    path.write_text(
        "version: 1\ntables:\n  public.merchants:\n    user_id: id\n"
        "    cursor: updated_at\n  public.payouts:\n    user_id: merchant_id\n"
        "track:\n  - event: Seen\n    table: merchants\n    on: insert\n"
        "  - event: Paid\n    table: payouts\n    on: insert\n"
    )
    rulebook = load_rulebook(path)

    plan = make_plan(rulebook)

    assert plan.tables == ["public.merchants"]
    assert [(item.rule, item.reason) for item in plan.skipped] == [
        ("Paid", "its table has no 'cursor' to replay by; give it one to backfill it")
    ]
    named = make_plan(rulebook, ("public.payouts",))  # named: check_tables refuses
    assert named.tables == ["public.payouts"]


def test_wall_clock_bounds_at_the_ends_of_time_stop_there() -> None:
    """Widened past the first or last time Python holds, a bound is that time
    (it was an OverflowError, a traceback)."""
    berlin = ZoneInfo("Europe/Berlin")
    window = Window(
        datetime(1, 1, 1, 2, tzinfo=UTC), datetime(9999, 12, 31, 23, 30, tzinfo=UTC)
    )

    since, until = window.bounds_for("timestamp without time zone", berlin)

    assert (since, until) == (datetime.min.isoformat(), datetime.max.isoformat())
