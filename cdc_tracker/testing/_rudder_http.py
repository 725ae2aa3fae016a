"""HTTP/1.1 plumbing for the fake RudderStack: framing, keep-alive, clean shutdown.

The server knows nothing of the gateway's rules: it reads a request, hands the
path, headers and raw body to a :class:`Receiver`, and writes what comes back
(or closes the connection when the receiver answers ``None``).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import structlog

from cdc_tracker.testing._rudder_checks import DECODE_CAP_BYTES, Answer

log = structlog.get_logger(__name__)

BAD_FRAMING = Answer(400, "malformed request body framing\n")
_LINE_CAP = 1024


class Receiver(Protocol):
    def receive(self, path: str, headers: Message, raw: bytes) -> Answer | None: ...

    def answer_get(self, path: str) -> Answer: ...


class FakeServer(ThreadingHTTPServer):
    """A threaded server that can close its open keep-alive connections on stop."""

    daemon_threads = False  # server_close() then joins every handler thread

    def __init__(self, address: tuple[str, int], receiver: Receiver) -> None:
        self.receiver = receiver
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut every open connection, so idle keep-alive handlers return at once."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already gone
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanishing mid-request is routine here (timeouts, drops).
        error = sys.exc_info()[1]
        log.debug("fake rudderstack connection error", error=type(error).__name__)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; without this, Nagle plus delayed ACK
    # would cost each keep-alive request tens of milliseconds.
    disable_nagle_algorithm = True
    server: FakeServer

    def do_POST(self) -> None:
        raw = self._read_body()
        if raw is None:
            self._reply(BAD_FRAMING, close=True)
            return
        answer = self.server.receiver.receive(self._route(), self.headers, raw)
        if answer is None:
            self.close_connection = True
            return
        self._reply(answer)

    def do_GET(self) -> None:
        self._reply(self.server.receiver.answer_get(self._route()))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the test output

    def _route(self) -> str:
        return self.path.partition("?")[0]

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            return None
        if not 0 <= size <= DECODE_CAP_BYTES:
            return None
        body = self.rfile.read(size)
        return body if len(body) == size else None

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        while True:
            try:
                size = int(self.rfile.readline(_LINE_CAP).split(b";")[0], 16)
            except ValueError:
                return None
            total += size
            if size == 0 or total > DECODE_CAP_BYTES:
                break
            parts.append(self.rfile.read(size))
            self.rfile.readline(_LINE_CAP)
        while self.rfile.readline(_LINE_CAP) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(parts) if total <= DECODE_CAP_BYTES else None

    def _reply(self, answer: Answer, *, close: bool = False) -> None:
        body = answer.body.encode("utf-8")
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in answer.headers:
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
