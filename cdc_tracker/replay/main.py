"""Wire a replay together for the CLI: settings -> rulebook -> plan -> replay."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import IO

import structlog

from cdc_tracker.compiled import warn_if_not_compiled
from cdc_tracker.daemon.shipping import DestinationShipper, PrintShipper
from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.errors import EXIT_INTERRUPTED, EXIT_OK
from cdc_tracker.replay.plan import Plan, check_rules, make_plan
from cdc_tracker.replay.runner import Replay, ReplayOptions, ReplayResult, window_of
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.runtime import tune_gc
from cdc_tracker.settings import Settings
from cdc_tracker.wording import counted

log = structlog.get_logger(__name__)


def run_replay(
    settings: Settings,
    options: ReplayOptions,
    stop: threading.Event,
    *,
    out: IO[str],
    err: IO[str],
    lines_as_logs: bool = False,
) -> int:
    """Replay as asked and return the exit code: 0 done, 130 stopped (resumable).

    The plan (tables read, rules skipped and why) goes to ``err`` before anything
    is read, the progress bar too on a terminal, and a summary at the end;
    dry-run calls go to ``out`` as JSON lines. With ``lines_as_logs`` (JSON logs,
    which a log shipper reads whole) all of those are log lines instead. Raises
    ``ConfigError`` (exit 2) or another ``CdcTrackerError`` (exit 1) as
    ``Replay.run`` does.
    """
    if not options.resume:
        window_of(options, datetime.now(UTC))  # a bad window is refused first
    plan = make_plan(load_rulebook(settings.rulebook), options.tables, options.rules)
    tune_gc()
    warn_if_not_compiled()
    _report_plan(plan, None if lines_as_logs else err)
    check_rules(plan)
    settings.require_dsn()
    progress = err if err.isatty() and not lines_as_logs else None
    if options.dry_run:
        printer = PrintShipper(out, settings.dry_run_limits())
        replay = Replay(settings, plan, printer, stop, options)
        result = replay.run()
    else:
        with RudderStackClient(settings.destination_settings()) as client:
            shipper = DestinationShipper(client)
            replay = Replay(
                settings, plan, shipper, stop, options, progress_out=progress
            )
            result = replay.run()
    if not lines_as_logs:
        err.write(summary(result) + "\n")
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


def _report_plan(plan: Plan, err: IO[str] | None) -> None:
    """The plan in words for the operator (each table read, each rule skipped
    and why) on ``err``, or as log lines without it; then in one log line,
    without the reasons the words already give."""
    for line in plan.report():
        if err is None:
            log.info("replay plan", detail=line)
        else:
            err.write(line + "\n")
    log.info(
        "replay planned",
        tables=plan.tables,
        skipped_rules=[item.rule for item in plan.skipped],
    )


def summary(result: ReplayResult) -> str:
    """One line for the operator: what was sent, how fast, what next."""
    line = (
        f"replayed {counted(result.rows, 'row')}: {counted(result.calls, 'call')}, "
        f"{counted(result.dead_letters, 'dead letter')} in {result.elapsed:.1f} s "
        f"({result.rows_per_s:,.0f} rows/s)"
    )
    if result.interrupted:
        line += f"; interrupted: {result.next_step}"
    return line
