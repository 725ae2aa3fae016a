"""Ship encoded calls to RudderStack's (or Segment's) ``/v1/batch`` endpoint.

``RudderStackClient.post`` sends one request and is the only place httpx's
exceptions and HTTP statuses become ours. ``RudderStackClient.deliver`` is the
only place that decides to retry, split, pause or give up.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum

import httpx
import structlog
from isal import igzip

from cdc_tracker import __version__
from cdc_tracker.destination.backoff import Backoff, parse_retry_after
from cdc_tracker.destination.batching import EncodedCall, make_batches, request_body
from cdc_tracker.destination.encode import rfc3339_ms
from cdc_tracker.destination.settings import DestinationSettings
from cdc_tracker.destination.stats import DeliveryResult, DeliveryStats, LogThrottle
from cdc_tracker.errors import (
    DeliveryError,
    DestinationAuthError,
    PermanentDelivery,
    RetryableDelivery,
)
from cdc_tracker.wording import counted

log = structlog.get_logger(__name__)

_AUTH_STATUSES = frozenset({401, 403, 404})
# 408 is the server giving up waiting for us: a passing failure like a timeout.
_RETRY_STATUSES = frozenset({408, 429})
# Refusals that point at the calls themselves: split the batch to find them.
_SPLIT_STATUSES = frozenset({400, 413, 422})


# How much of a refusal's answer a dead letter keeps: the destination's reason.
_DETAIL_CHARS = 200


class _Stopped(Enum):
    STOPPED = "stopped"


@dataclass(slots=True)
class _Request:
    """Calls sent as one request, while a refusal is narrowed down to those at
    fault; and, when the destination seems to refuse everything, the calls it
    refused last, resent whole."""

    calls: list[EncodedCall]
    delivered: int = 0
    refused: list[tuple[EncodedCall, str]] = field(default_factory=list)
    trailing: int = 0  # how many calls were refused since the last one taken
    refused_since: float | None = None  # when it began to refuse them all
    narrowing: bool = False  # patience is out: the last narrowing, for good

    @property
    def settled(self) -> bool:
        return self.delivered + len(self.refused) == len(self.calls)

    @property
    def resent_whole(self) -> bool:
        return self.refused_since is not None and not self.narrowing

    def take(self, calls: int) -> None:
        self.delivered += calls
        self.trailing = 0

    def refuse(self, batch: list[EncodedCall], reason: str) -> None:
        self.refused.extend((call, reason) for call in batch)
        self.trailing += len(batch)


def _unsettled(
    request: _Request, queue: deque[tuple[list[EncodedCall], _Request]]
) -> list[EncodedCall]:
    """What a stop leaves undelivered, in order: the calls ``request`` saw
    refused and has not yet dead-lettered or resent (they came before the rest),
    then every call still queued."""
    pending = [call for call, _ in request.refused]
    pending += [call for waiting, _ in queue for call in waiting]
    log.info("delivery interrupted", calls=len(pending))
    return pending


class RudderStackClient:
    """A keep-alive HTTP client for one destination. Not safe for concurrent use.

    ``transport`` replaces the network (tests pass ``httpx.MockTransport``),
    ``backoff`` the retry delays, ``sleep`` the wait between retries when no stop
    event is given, and ``now`` the clock that stamps ``sentAt``. ``stats`` holds
    running counters for metrics.
    """

    def __init__(
        self,
        settings: DestinationSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = 30.0,
    ) -> None:
        self.settings = settings
        self.stats = DeliveryStats()
        self._backoff = backoff if backoff is not None else Backoff()
        # Waits while every call is refused grow on their own: each refusal is
        # an answer, which resets the backoff of failures.
        self._refusal_backoff = replace(self._backoff, attempts=0)
        self._clock = clock
        self._sleep = sleep
        self._now = now
        self._host = httpx.URL(settings.url).host
        self._retry_log = LogThrottle(log_interval)
        self._pause_log = LogThrottle(log_interval)
        self._client = httpx.Client(
            transport=transport,
            timeout=settings.timeout,
            headers=_headers(settings),
            follow_redirects=False,
        )

    def close(self) -> None:
        """Close the kept-alive connections."""
        self._client.close()

    def __enter__(self) -> RudderStackClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def post(self, batch: list[EncodedCall]) -> None:
        """Send ``batch`` once, every call stamped with the current ``sentAt``.

        Returns when the destination answered 2xx (the calls are stored). Raises
        ``DestinationAuthError`` for 401/403/404; ``RetryableDelivery`` for 408,
        429, 5xx, timeouts and connection failures (with ``retry_after`` from the
        answer, if any); ``PermanentDelivery`` for any other status.
        """
        body = request_body(batch, rfc3339_ms(self._now()))
        use_gzip = self.settings.use_gzip
        # ISA-L's gzip: at its level 1, a seventh of zlib's CPU at level 1, and
        # smaller output. The shipping thread compresses without the GIL.
        level = self.settings.gzip_level
        content = igzip.compress(body, level, mtime=0) if use_gzip else body
        self._count_request(len(batch), len(content))
        started = time.perf_counter()
        request = self._client.build_request(
            "POST",
            self.settings.endpoint,
            content=content,
            headers=_GZIP_HEADERS if use_gzip else None,
        )
        try:
            response = self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            self.stats.count_error("timeout")
            raise RetryableDelivery(
                f"{self._host} did not answer within {self.settings.timeout} s "
                f"to a request of {counted(len(batch), 'call')}"
            ) from exc
        except httpx.RequestError as exc:
            self.stats.count_error("connection")
            raise RetryableDelivery(
                f"{self._host} could not be reached or dropped the connection "
                f"({type(exc).__name__}) during a request of "
                f"{counted(len(batch), 'call')}"
            ) from exc
        try:
            response.read()
        except httpx.HTTPError:
            # A body cut short, or one that does not decode (gzip said, plain
            # sent): the status has answered already, and decides alone.
            pass
        finally:
            response.close()
        log.debug(
            "request answered",
            host=self._host,
            status=response.status_code,
            calls=len(batch),
            bytes=len(content),
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        self._raise_for_status(response, len(batch))

    def deliver(
        self, calls: list[EncodedCall], stop: threading.Event | None = None
    ) -> DeliveryResult:
        """Deliver ``calls`` in order, one request in flight at a time.

        Retries passing failures (408, 429, 5xx, timeouts, dropped connections)
        for as long as it takes, resending the same call bytes (only ``sentAt``
        changes). A batch refused with 400, 413 or 422 is split in halves until the
        refused calls stand alone; those, and calls over the per-call limit, become
        dead letters, with the start of the destination's answer as their reason.
        A request refused to its last call is waited out first (see
        ``_after_refusals``). Any other refusal (401/403/404, 3xx, other 4xx) is
        taken as a configuration problem: delivery pauses, logs it loudly, retries
        with backoff and drops nothing. When ``stop`` is set during a wait, returns
        at once with the unacknowledged calls in ``pending``: nothing undelivered is
        counted as delivered.
        """
        requests, retries = self.stats.requests, self.stats.retries
        batches = make_batches(calls, self.settings.limits)
        result = DeliveryResult()
        for call, reason in batches.oversize:
            self._dead_letter(result, call, reason)
        queue = deque((request, _Request(request)) for request in batches.requests)
        while queue:
            batch, request = queue[0]
            answer = self._send_until_answered(batch, stop)
            if answer is _Stopped.STOPPED:
                result.pending = _unsettled(request, queue)
                break
            queue.popleft()
            if answer is None:
                result.delivered += len(batch)
                self.stats.calls_delivered += len(batch)
                request.take(len(batch))
                self._refusal_backoff.reset()
                self.stats.refusing = False
            elif len(batch) > 1 and not request.resent_whole:
                half = len(batch) // 2
                queue.extendleft([(batch[half:], request), (batch[:half], request)])
                continue
            else:
                request.refuse(batch, _refusal_reason(answer))
            if not request.settled:
                continue
            again = self._after_refusals(request, stop)
            if again is _Stopped.STOPPED:
                result.pending = _unsettled(request, queue)
                break
            settled = len(request.refused) - (len(again.calls) if again else 0)
            for call, reason in request.refused[:settled]:
                self._dead_letter(result, call, reason)
            if again is not None:
                queue.appendleft((again.calls, again))
            else:
                self.stats.refusing = False
        result.requests = self.stats.requests - requests
        result.retries = self.stats.retries - retries
        return result

    def _after_refusals(
        self, request: _Request, stop: threading.Event | None
    ) -> _Request | _Stopped | None:
        """Once each call of ``request`` was taken or refused alone: the calls to
        send again, or None when those refused are refused for good.

        Calls refused alone after a call was taken are at fault: the destination
        took the call before them. But several refused in a row to the end of
        the request point at the destination itself (a gateway answering 400 to
        everything, from the start or from some point on): they are resent whole
        after a growing wait, as an outage is waited out, for
        ``settings.refusal_patience`` s; then narrowed down once more, for good.
        """
        if request.trailing < 2 or request.narrowing:
            return None
        suspects = request.refused[-request.trailing :]
        now = self._clock()
        since = now if request.refused_since is None else request.refused_since
        again = _Request([call for call, _ in suspects], refused_since=since)
        reason = suspects[-1][1]
        if now - since >= self.settings.refusal_patience:
            again.narrowing = True
            log.error(
                "destination still refuses every call of a request: "
                "dead-lettering those it refuses alone",
                host=self._host,
                calls=len(again.calls),
                waited_s=round(now - since),
                reason=reason,
            )
            return again
        if request.refused_since is None:
            log.error(
                "destination refused every call of a request, one by one: "
                "taken for its fault, resending them",
                host=self._host,
                calls=len(again.calls),
                reason=reason,
                patience_s=self.settings.refusal_patience,
            )
        delay = self._refusal_backoff.next_delay()
        self.stats.refusing = True
        self.stats.retries += 1
        if self._wait(delay, stop):
            return _Stopped.STOPPED
        return again

    def _send_until_answered(
        self, batch: list[EncodedCall], stop: threading.Event | None
    ) -> PermanentDelivery | _Stopped | None:
        """Post until answered: ``None`` on 2xx, a splittable refusal's error."""
        while True:
            try:
                self.post(batch)
            except RetryableDelivery as exc:
                delay = self._backoff.next_delay(exc.retry_after)
                self._note_retry(exc, delay, len(batch))
            except PermanentDelivery as exc:
                if exc.status in _SPLIT_STATUSES:
                    self._note_answered()
                    return exc
                delay = self._backoff.next_delay()
                self._note_paused(exc, delay, len(batch))
            except DestinationAuthError as exc:
                delay = self._backoff.next_delay()
                self._note_paused(exc, delay, len(batch))
            else:
                self._note_answered()
                return None
            self.stats.retries += 1
            if self._wait(delay, stop):
                return _Stopped.STOPPED

    def _wait(self, delay: float, stop: threading.Event | None) -> bool:
        """Wait ``delay`` s; return whether ``stop`` was set meanwhile."""
        if stop is None:
            self._sleep(delay)
            return False
        return stop.wait(delay)

    def _raise_for_status(self, response: httpx.Response, calls: int) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        self.stats.count_error(str(status))
        what = (
            f"{self._host} answered {status} to a request of {counted(calls, 'call')}"
        )
        if status in _AUTH_STATUSES:
            raise DestinationAuthError(what, status=status, detail=_detail(response))
        if status in _RETRY_STATUSES or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise RetryableDelivery(what, retry_after=retry_after)
        location = response.headers.get("Location")
        detail = f"redirected to {location}" if location else _detail(response)
        raise PermanentDelivery(what, status=status, detail=detail)

    def _count_request(self, calls: int, size: int) -> None:
        self.stats.requests += 1
        self.stats.calls_sent += calls
        self.stats.bytes_sent += size

    def _note_retry(self, exc: RetryableDelivery, delay: float, calls: int) -> None:
        self.stats.consecutive_failures += 1
        if self._retry_log.allow():
            log.warning(
                "delivery failed, retrying",
                host=self._host,
                status=self.stats.last_error,
                attempt=self._backoff.attempts,
                delay_s=round(delay, 3),
                calls=calls,
                suppressed=self._retry_log.take_suppressed(),
                error=str(exc),
            )

    def _note_paused(self, exc: DeliveryError, delay: float, calls: int) -> None:
        self.stats.consecutive_failures += 1
        self.stats.paused = True
        if self._pause_log.allow():
            log.error(
                "destination refuses our settings, delivery paused",
                host=self._host,
                status=self.stats.last_error,
                attempt=self._backoff.attempts,
                delay_s=round(delay, 3),
                calls=calls,
                suppressed=self._pause_log.take_suppressed(),
                error=exc.what,
                hint=exc.hint,
                answer=getattr(exc, "detail", "") or None,
            )

    def _note_answered(self) -> None:
        if self.stats.consecutive_failures:
            log.info(
                "destination recovered",
                host=self._host,
                failures=self.stats.consecutive_failures,
            )
        self.stats.consecutive_failures = 0
        self.stats.paused = False
        self._backoff.reset()
        self._retry_log.reset()
        self._pause_log.reset()

    def _dead_letter(
        self, result: DeliveryResult, call: EncodedCall, reason: str
    ) -> None:
        self.stats.calls_dead_lettered += 1
        result.dead_letters.append((call, reason))
        # The caller stores and logs each letter; this says which request's.
        log.debug(
            "call dead-lettered",
            message_id=call.message_id,
            rule=call.rule,
            reason=reason,
        )


def _detail(response: httpx.Response) -> str:
    """The start of a refusal's answer, on one line: the destination's reason."""
    try:
        content = response.content
    except httpx.ResponseNotRead:  # its reading failed (see ``post``)
        return ""
    text = content[: _DETAIL_CHARS * 2].decode("utf-8", "replace")
    return " ".join(text.split())[:_DETAIL_CHARS]


def _refusal_reason(refusal: PermanentDelivery) -> str:
    # Before the colon: the kind of reason, which /metrics counts.
    reason = f"refused by the destination with status {refusal.status}"
    return f"{reason}: {refusal.detail}" if refusal.detail else reason


_GZIP_HEADERS = {"Content-Encoding": "gzip"}


def _headers(settings: DestinationSettings) -> dict[str, str]:
    token = base64.b64encode(f"{settings.write_key}:".encode()).decode("ascii")
    return {
        "Authorization": f"Basic {token}",
        "Content-Type": "application/json",
        "User-Agent": f"cdc-tracker/{__version__}",
    }
