"""A strict fake RudderStack (or Segment) data plane on loopback, for tests and demos.

It answers exactly as the wire contract's table "Order of checks and answers" says
(/work/shared/rudderstack-contract.md), in that order: auth, source disabled, gzip,
JSON, element shape, user ids, then -- in strict mode -- the per-call fields our
shipper must get right, then rate limit, size and empty batch. Accepted calls are
kept in arrival order with the time they arrived.

Switches inject faults ahead of every check (``fail_next``, ``fail_for``,
``stall_next``, ``drop_next``) or refuse chosen calls (``reject_message_ids``).
Every switch is thread-safe and may be flipped while clients are sending.

Run it alone as a local receiver::

    python -m cdc_tracker.testing.rudderstack --port 8088 --write-key KEY [--segment]
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from email.message import Message
from types import TracebackType
from typing import Any

import structlog

from cdc_tracker.testing import _rudder_checks as checks
from cdc_tracker.testing._rudder_checks import Answer, GzipMode
from cdc_tracker.testing._rudder_faults import Fault, FaultPlan
from cdc_tracker.testing._rudder_http import FakeServer
from cdc_tracker.testing._rudder_ledger import Ledger
from cdc_tracker.testing._rudder_records import (
    Exchange,
    ReceivedBatch,
    ReceivedCall,
    RequestRecord,
)
from cdc_tracker.testing._rudder_strict import first_problem

__all__ = ["FakeRudderStack", "ReceivedCall", "RequestRecord"]

log = structlog.get_logger(__name__)

# Route -> the call type a single-call route forces; None for the batch route.
_ROUTES: dict[str, str | None] = {
    "/v1/batch": None,
    "/v1/identify": "identify",
    "/v1/track": "track",
}
_NOT_FOUND = Answer(404, "404 page not found\n")
_NOT_ALLOWED = Answer(405, "method not allowed\n")
_HEALTH = Answer(200, '{"server":"UP","db":"UP"}', content_type="application/json")

SEGMENT_MAX_CALL_BYTES = 32 * 1024
SEGMENT_MAX_REQUEST_BYTES = 500 * 1024
SEGMENT_MAX_CALLS = 2_500


class FakeRudderStack:
    """An in-process RudderStack data plane on ``url``; see the module docstring.

    ``strict`` adds the per-call field checks (400 ``strict: batch[i].field: ...``).
    ``segment`` swaps the 413 size limit for Segment's: over 32 KB per call or
    500 KB per request is a 400, and more than 2,500 calls are answered 200 but
    kept in ``dropped`` instead of ``calls``. ``rate_limit_calls`` allows that many
    calls per second, then 429. ``record=False`` keeps counts only (long demos).
    ``on_accept`` runs in the server thread for each accepted call, in order.
    """

    def __init__(
        self,
        *,
        write_keys: Iterable[str] = ("test-write-key",),
        host: str = "127.0.0.1",
        port: int = 0,
        strict: bool = True,
        segment: bool = False,
        max_body_bytes: int = 4_096_000,
        rate_limit_calls: int | None = None,
        gzip: GzipMode = "accept",
        on_accept: Callable[[ReceivedCall], None] | None = None,
        record: bool = True,
    ) -> None:
        self.write_keys: set[str] = set(write_keys)
        self.strict = strict
        self.segment = segment
        self.max_body_bytes = max_body_bytes
        self.rate_limit_calls = rate_limit_calls
        self.gzip_mode: GzipMode = gzip
        self._address = (host, port)
        self._on_accept = on_accept
        self._faults = FaultPlan()
        self._ledger = Ledger(record=record)
        self._window_lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: FakeServer | None = None
        self._thread: threading.Thread | None = None
        self._reset_switches()

    def _reset_switches(self) -> None:
        self._disabled = False
        self._rejected_ids: frozenset[str] = frozenset()
        self._window = (0.0, 0)  # (start, calls admitted in it)

    # -- lifecycle -----------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port``; only valid once started."""
        if self._server is None:
            raise RuntimeError("fake rudderstack is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeRudderStack:
        """Bind and serve in a background thread; returns ``self``."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = FakeServer(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},  # stop() waits up to this long
            name="fake-rudderstack",
            daemon=True,
        )
        self._thread.start()
        log.info("fake rudderstack listening", url=self.url, segment=self.segment)
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections and wait for handlers to finish."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None
        log.info(
            "fake rudderstack stopped",
            requests=self._ledger.answered_requests,
            calls=self._ledger.accepted_calls,
        )

    def __enter__(self) -> FakeRudderStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what arrived ----------------------------------------------------------

    @property
    def calls(self) -> list[ReceivedCall]:
        """A snapshot of the accepted calls, in arrival order."""
        return self._ledger.calls()

    @property
    def dropped(self) -> list[ReceivedCall]:
        """Calls Segment mode answered 200 for but discarded (over 2,500 a batch)."""
        return self._ledger.dropped()

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the records of POSTs to the gateway's routes, in the order
        they were answered."""
        return self._ledger.requests()

    @property
    def accepted_count(self) -> int:
        """Calls accepted since start or ``reset()``, even with ``record=False``."""
        return self._ledger.accepted_calls

    def message_ids(self) -> list[str]:
        """The messageIds of the accepted calls, in arrival order (cheap)."""
        return self._ledger.message_ids()

    def statuses(self) -> list[int | None]:
        """Each POST's status in answer order; ``None`` for a dropped connection."""
        return [record.status for record in self.requests]

    def wait_for_calls(self, n: int, timeout: float = 10.0) -> list[ReceivedCall]:
        """Block until at least ``n`` calls were accepted; return them all.

        Returning parses every call again; for tens of thousands of calls,
        ``message_ids()`` or ``accepted_count`` are much cheaper.

        Raises ``AssertionError`` saying what did arrive when ``timeout`` passes.
        """
        if not self._ledger.wait_for_calls(n, timeout):
            raise AssertionError(
                f"waited {timeout} s for {n} calls: {self._ledger.describe()}"
            )
        return self.calls

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RequestRecord]:
        """Block until at least ``n`` POSTs were answered (or dropped); return them.

        Raises ``AssertionError`` saying what did arrive when ``timeout`` passes.
        """
        if not self._ledger.wait_for_requests(n, timeout):
            raise AssertionError(
                f"waited {timeout} s for {n} requests: {self._ledger.describe()}"
            )
        return self.requests

    def reset(self) -> None:
        """Forget calls and requests; clear faults, rejections, rate window and the
        disabled flag. Configuration (keys, modes, limits) is kept."""
        self._faults.clear()
        self._ledger.clear()
        with self._window_lock:
            self._reset_switches()

    # -- faults ----------------------------------------------------------------

    def fail_next(
        self, n: int, status: int = 503, retry_after: str | None = None
    ) -> None:
        """Answer the next ``n`` POSTs with ``status`` (and ``Retry-After``)."""
        self._faults.schedule(Fault("fail", status, retry_after), n)

    def fail_for(
        self, seconds: float, status: int = 503, retry_after: str | None = None
    ) -> None:
        """Answer every POST with ``status`` for ``seconds`` from now."""
        self._faults.fail_for(seconds, Fault("fail", status, retry_after))

    def stall_next(self, n: int, seconds: float) -> None:
        """Hold the next ``n`` POSTs ``seconds``, then 504; their calls are not kept."""
        self._faults.schedule(Fault("stall", seconds=seconds), n)

    def drop_next(self, n: int) -> None:
        """Close the connection of the next ``n`` POSTs without answering."""
        self._faults.schedule(Fault("drop"), n)

    def reject_message_ids(self, ids: Iterable[str]) -> None:
        """Answer 400 to any batch holding one of ``ids`` (replaces the set)."""
        self._rejected_ids = frozenset(ids)

    def disable_source(self, disabled: bool = True) -> None:
        """Answer 404 ``source is disabled`` to authenticated POSTs."""
        self._disabled = disabled

    # -- the gateway (called by the server threads) ----------------------------

    def answer_get(self, path: str) -> Answer:
        if path == "/health":
            return _HEALTH
        return _NOT_ALLOWED if path in _ROUTES else _NOT_FOUND

    def receive(self, path: str, headers: Message, raw: bytes) -> Answer | None:
        """Answer one POST; ``None`` means close the connection without a reply."""
        if path not in _ROUTES:
            return _NOT_FOUND
        request_no = self._ledger.next_request_no()
        exchange = Exchange(request_no, path, headers, time.monotonic())
        fault = self._faults.take(exchange.arrived)
        if fault is None:
            answer: Answer | None = self._check(exchange, raw)
        else:
            exchange.fault = fault.kind
            answer = self._misbehave(fault)
        self._note(exchange, answer)
        return answer

    def _misbehave(self, fault: Fault) -> Answer | None:
        if fault.kind == "drop":
            return None
        if fault.kind == "stall" and self._stopping.wait(fault.seconds):
            return None
        return fault.answer()

    def _check(self, exchange: Exchange, raw: bytes) -> Answer:
        key, refusal = checks.check_write_key(
            exchange.headers.get("Authorization"), self.write_keys
        )
        exchange.write_key = key
        if refusal is not None:
            return refusal
        if self._disabled:
            return checks.SOURCE_DISABLED
        data = checks.decode_body(
            raw, exchange.headers.get("Content-Encoding"), self.gzip_mode
        )
        if isinstance(data, Answer):
            return data
        exchange.body_bytes = len(data)
        calls = checks.parse_calls(data, _ROUTES[exchange.path])
        if isinstance(calls, Answer):
            return calls
        exchange.n_calls = len(calls)
        batch = ReceivedBatch(
            data, _ROUTES[exchange.path], exchange.request_no, exchange.arrived
        )
        return self._check_calls(exchange, calls, batch)

    def _check_calls(
        self, exchange: Exchange, calls: list[Any], batch: ReceivedBatch
    ) -> Answer:
        refusal = (
            checks.check_elements(calls)
            or self._strict_refusal(calls)
            or checks.rejected_call(calls, self._rejected_ids)
        )
        if refusal is not None:
            return refusal
        later = self._size_refusal(calls, batch) or (
            None if calls else checks.EMPTY_BATCH
        )
        # The table puts the rate limit before size and emptiness, but only a
        # request about to be stored may use up the allowance.
        if not self._admit(len(calls), consume=later is None):
            return self._rate_limited()
        return later or self._store(exchange, batch, calls)

    def _strict_refusal(self, calls: list[dict[str, Any]]) -> Answer | None:
        problem = first_problem(calls) if self.strict else None
        return None if problem is None else Answer(400, f"strict: {problem}\n")

    def _size_refusal(
        self, calls: list[dict[str, Any]], batch: ReceivedBatch
    ) -> Answer | None:
        if not self.segment:
            return checks.TOO_LARGE if len(batch.data) > self.max_body_bytes else None
        if len(batch.data) > SEGMENT_MAX_REQUEST_BYTES:
            return Answer(400, f"request is {len(batch.data)} bytes, over 500 KB\n")
        for index in range(len(calls)):
            size = len(batch.call_text(index))
            if size > SEGMENT_MAX_CALL_BYTES:
                return Answer(400, f"batch[{index}] is {size} bytes, over 32 KB\n")
        return None

    def _admit(self, n_calls: int, *, consume: bool) -> bool:
        limit = self.rate_limit_calls
        if limit is None:
            return True
        now = time.monotonic()
        with self._window_lock:
            start, used = self._window
            if now - start >= 1.0:
                start, used = now, 0
            if used + n_calls > limit:
                return False
            self._window = (start, used + n_calls if consume else used)
            return True

    def _rate_limited(self) -> Answer:
        if not self.segment:
            return checks.RATE_LIMITED
        return Answer(429, checks.RATE_LIMITED.body, (("Retry-After", "1"),))

    def _store(
        self, exchange: Exchange, batch: ReceivedBatch, calls: list[dict[str, Any]]
    ) -> Answer:
        batch.message_ids = tuple(call.get("messageId") for call in calls)
        if self.segment and len(calls) > SEGMENT_MAX_CALLS:
            exchange.dropped = len(calls)
            self._ledger.drop(batch)
            return checks.OK
        self._ledger.accept(batch)
        if self._on_accept is not None:
            self._tell(batch.calls(calls))
        return checks.OK

    def _tell(self, calls: list[ReceivedCall]) -> None:
        assert self._on_accept is not None
        for call in calls:
            try:
                self._on_accept(call)
            except Exception as error:
                # The calls are stored and will be answered 200 regardless.
                log.error("fake rudderstack on_accept failed", error=repr(error))

    def _note(self, exchange: Exchange, answer: Answer | None) -> None:
        self._ledger.answered(exchange.record(answer))


if __name__ == "__main__":
    from cdc_tracker.testing._rudder_cli import main

    sys.exit(main())
