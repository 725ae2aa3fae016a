"""Wire the pieces together for the CLI: settings -> rulebook -> daemon."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import IO

from cdc_tracker.daemon.loop import Daemon
from cdc_tracker.daemon.shipping import DestinationShipper, PrintShipper, Shipper
from cdc_tracker.destination.rudderstack import RudderStackClient
from cdc_tracker.model import TableInfo
from cdc_tracker.ops.health import HealthServer, Probe
from cdc_tracker.replay.plan import is_cursor_type
from cdc_tracker.rules.rulebook import Rulebook, load_rulebook
from cdc_tracker.rules.schema import require_fit
from cdc_tracker.runtime import tune_gc
from cdc_tracker.settings import Settings
from cdc_tracker.source.catalog import read_catalog
from cdc_tracker.source.slot import connect


def run_daemon(
    settings: Settings,
    stop: threading.Event,
    *,
    dry_run: bool = False,
    recreate_slot: bool = False,
    out: IO[str],
) -> Daemon:
    """Run until ``stop`` is set; raises ``CdcTrackerError`` when it cannot go on."""
    rulebook = load_rulebook(settings.rulebook)
    settings.require_dsn()
    tune_gc()
    if dry_run:
        shipper: Shipper = PrintShipper(out, settings.dry_run_limits())
        daemon = Daemon(settings, rulebook, shipper, stop, advance=False)
        _reload_on_sighup(daemon)
        daemon.run()
        return daemon
    with RudderStackClient(settings.destination_settings()) as client:
        shipper = DestinationShipper(client)
        daemon = Daemon(settings, rulebook, shipper, stop, recreate_slot=recreate_slot)
        _reload_on_sighup(daemon)
        health = _serve_health(settings, daemon, client)
        try:
            daemon.run()
        finally:
            if health is not None:
                health.stop()
    return daemon


def _serve_health(
    settings: Settings, daemon: Daemon, client: RudderStackClient
) -> HealthServer | None:
    if settings.metrics_address in ("", "off"):
        return None
    probe = Probe(
        daemon.counters,
        client.stats,
        active=lambda: daemon.slot is not None,
        stall_seconds=settings.stall_seconds,
    )
    return HealthServer(settings.metrics_address, probe).start()


def _reload_on_sighup(daemon: Daemon) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda *_: daemon.watcher.requested.set())


def check_rulebook(path: Path, dsn: str | None) -> str:
    """Validate a rulebook (and, with ``dsn``, its fit to the database).

    Returns a one-line summary, then a note per table ``replay`` would refuse;
    raises ``RulebookError`` listing every problem.
    """
    rulebook = load_rulebook(path)
    where = "structure and expressions"
    notes: list[str] = []
    if dsn:
        with connect(dsn) as conn:
            catalog = read_catalog(conn, rulebook.schema_tables)
        require_fit(rulebook, catalog)
        where = "structure, expressions and the live schema"
        notes = _cursor_notes(rulebook, catalog)
    return "\n".join([f"{path}: ok ({where}): {rulebook.size}", *notes])


def _cursor_notes(rulebook: Rulebook, catalog: dict[str, TableInfo]) -> list[str]:
    """Cursors that only ``replay`` would refuse: the daemon does not use them."""
    notes = []
    for spec in rulebook.tables.values():
        info = catalog.get(spec.name)
        declared = info.columns.get(spec.cursor or "") if info else None
        if declared is not None and not is_cursor_type(declared):
            notes.append(
                f"{rulebook.path}:{spec.line}: note: cursor column '{spec.cursor}' "
                f"of {spec.name} is {declared}, not a timestamp: 'replay' will "
                "refuse this table"
            )
    return notes
