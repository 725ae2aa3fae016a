"""A minimal counting receiver for ``/v1/batch``: accepts everything, counts calls.

It runs in its own process (``python -m benchmarks.receiver``) so that it never
competes with the daemon for a GIL. It checks nothing a real data plane checks:
the strict fake (``cdc_tracker.testing.rudderstack``) is the place for that. With
``--delays`` it also records, for every call, the time from its ``timestamp``
(the commit time) to the moment the 200 answer was written (acknowledged).

``GET /stats`` answers ``{"calls", "requests", "bytes", "delays_ms"}``;
``POST /reset`` clears them. The first line on stdout is the port it listens on.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import orjson
from isal import igzip


class _Call(msgspec.Struct):
    """What the receiver reads of a call; every other field is skipped unread."""

    messageId: str  # the wire name
    timestamp: str = ""


class _Batch(msgspec.Struct):
    batch: list[_Call]


# Parses a body without building the calls' traits and properties: the receiver
# must cost the machine little, since it shares the cores with the daemon.
_read_batch = msgspec.json.Decoder(_Batch).decode


class Stats:
    """Counters shared by the handler threads."""

    def __init__(self, delays: bool) -> None:
        self.lock = threading.Lock()
        self.record_delays = delays
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.requests = 0
        self.bytes = 0
        self.delays_ms: list[float] = []

    def as_json(self) -> bytes:
        with self.lock:
            return orjson.dumps(
                {
                    "calls": self.calls,
                    "requests": self.requests,
                    "bytes": self.bytes,
                    "delays_ms": self.delays_ms,
                }
            )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Server

    def do_POST(self) -> None:
        stats = self.server.stats
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/reset":
            with stats.lock:
                stats.reset()
            self._answer(b"{}")
            return
        # ISA-L inflates several times faster than zlib: the receiver shares the
        # cores with the daemon and its server, and should take little of them.
        body = igzip.decompress(raw) if self.headers.get("Content-Encoding") else raw
        calls = _read_batch(body).batch
        self._answer(b'{"ok":true}')
        acked = time.time()
        with stats.lock:
            stats.calls += len(calls)
            stats.requests += 1
            stats.bytes += len(raw)
            if stats.record_delays:
                stats.delays_ms.extend(_delays(calls, acked))

    def do_GET(self) -> None:
        self._answer(self.server.stats.as_json())

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would cost more than the request


def _delays(calls: list[_Call], acked: float) -> list[float]:
    return [
        (acked - datetime.fromisoformat(call.timestamp).timestamp()) * 1000
        for call in calls
    ]


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, stats: Stats) -> None:
        self.stats = stats
        super().__init__(("127.0.0.1", port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.receiver")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delays", action="store_true")
    args = parser.parse_args(argv)
    server = Server(args.port, Stats(args.delays))
    sys.stdout.write(f"{server.server_address[1]}\n")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
