"""``/healthz``, ``/readyz`` and ``/metrics`` on a small HTTP server (loopback).

- ``/healthz``: 200 while the process serves requests at all;
- ``/readyz``: 200 when the daemon is connected, holds the slot lock, made progress
  within ``stall_seconds`` and the destination accepts our credentials; 503 with the
  reason otherwise (a standby replica is alive but not ready);
- ``/metrics``: Prometheus text format.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog

from cdc_tracker.daemon.counters import Counters
from cdc_tracker.destination.stats import DeliveryStats
from cdc_tracker.errors import ConfigError
from cdc_tracker.ops.metrics import render

log = structlog.get_logger(__name__)


class Probe:
    """What the endpoints read: counters, delivery stats and a readiness test."""

    def __init__(
        self,
        counters: Counters,
        delivery: DeliveryStats | None,
        active: Callable[[], bool],
        stall_seconds: float,
    ) -> None:
        self.counters = counters
        self.delivery = delivery
        self.active = active
        self.stall_seconds = stall_seconds

    def not_ready(self) -> str | None:
        """Why the daemon is not ready, or None when it is."""
        if not self.active():
            return "not reading the slot (starting, standing by or reconnecting)"
        if self.counters.missing_tables:
            return f"tracked tables are gone: {', '.join(self.counters.missing_tables)}"
        if problems := self.counters.schema_problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            return f"the rulebook does not fit the schema: {problems[0]}{more}"
        if self.delivery is not None and self.delivery.paused:
            return "destination refuses the write key or URL"
        if self.delivery is not None and self.delivery.refusing:
            return "destination refuses every call it is sent (resending them)"
        idle = time.monotonic() - self.counters.last_progress
        if idle > self.stall_seconds:
            return f"no progress for {idle:.0f} s"
        return None


class HealthServer:
    """Serves a ``Probe`` on ``host:port`` in a background thread."""

    def __init__(self, address: str, probe: Probe) -> None:
        host, port = parse_address(address)
        handler = type("Handler", (_Handler,), {"probe": probe})
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve health and metrics on {address}: {exc.strerror}",
                hint="set CDC_TRACKER_METRICS_ADDRESS to a free port, or 'off'",
            ) from exc
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="health", daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> HealthServer:
        self.thread.start()
        log.info("serving health and metrics", address=self.address)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def parse_address(address: str) -> tuple[str, int]:
    """``127.0.0.1:9187`` or ``:9187`` (all interfaces) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"metrics address {address!r} is not HOST:PORT",
            hint="for example 127.0.0.1:9187, or 'off'",
        )
    return host.strip("[]") or "0.0.0.0", int(port)


class _Handler(BaseHTTPRequestHandler):
    probe: Probe
    server_version = "cdc-tracker"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._answer(200, b"ok\n")
        elif path == "/readyz":
            reason = self.probe.not_ready()
            if reason is None:
                self._answer(200, b"ready\n")
            else:
                self._answer(503, f"not ready: {reason}\n".encode())
        elif path == "/metrics":
            body = render(self.probe.counters, self.probe.delivery)
            self._answer(200, body, "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._answer(404, b"not found: try /healthz, /readyz or /metrics\n")

    def _answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Probes every few seconds would flood the log: stay quiet."""
