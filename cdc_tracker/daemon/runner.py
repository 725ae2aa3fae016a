"""Wire the pieces together for the CLI: settings -> rulebook -> daemon."""

from __future__ import annotations

import signal
import threading
from typing import IO

from cdc_tracker.compiled import warn_if_not_compiled
from cdc_tracker.daemon.loop import Daemon
from cdc_tracker.daemon.ship_process import ProcessShipper
from cdc_tracker.daemon.shipping import PrintShipper, Shipper
from cdc_tracker.destination.stats import DeliveryStats
from cdc_tracker.ops.health import HealthServer, Probe
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.runtime import tune_gc
from cdc_tracker.settings import Settings


def run_daemon(
    settings: Settings,
    stop: threading.Event,
    *,
    dry_run: bool = False,
    recreate_slot: bool = False,
    out: IO[str],
) -> Daemon:
    """Run until ``stop`` is set; raises ``CdcTrackerError`` when it cannot go on."""
    if threading.current_thread() is threading.main_thread():
        # A SIGHUP before the reload handler is in place finds the rulebook
        # being read anyway: ignored, not fatal.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    rulebook = load_rulebook(settings.rulebook)
    settings.require_dsn()
    tune_gc()
    warn_if_not_compiled()
    if dry_run:
        shipper: Shipper = PrintShipper(out, settings.dry_run_limits())
        daemon = Daemon(settings, rulebook, shipper, stop, advance=False)
        _reload_on_sighup(daemon)
        daemon.run()
        return daemon
    # Delivery runs in a process of its own, off this one's lock (see
    # daemon.ship_process).
    with ProcessShipper(
        settings.destination_settings(),
        log_format=settings.log_format,
        log_level=settings.log_level,
    ) as shipper:
        daemon = Daemon(settings, rulebook, shipper, stop, recreate_slot=recreate_slot)
        _reload_on_sighup(daemon)
        health = _serve_health(settings, daemon, shipper.stats)
        try:
            daemon.run()
        finally:
            if health is not None:
                health.stop()
    return daemon


def _serve_health(
    settings: Settings, daemon: Daemon, stats: DeliveryStats
) -> HealthServer | None:
    if settings.metrics_address in ("", "off"):
        return None
    probe = Probe(
        daemon.counters,
        stats,
        active=lambda: daemon.slot is not None,
        stall_seconds=settings.stall_seconds,
    )
    return HealthServer(settings.metrics_address, probe).start()


def _reload_on_sighup(daemon: Daemon) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda *_: daemon.watcher.requested.set())
