"""Prometheus metrics, built at scrape time from the daemon's running counters.

Nothing on the hot path touches prometheus_client: the collector reads the plain
counters of the daemon and of the destination client when ``/metrics`` is asked.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from cdc_tracker.daemon.counters import DELAY_BUCKETS, Counters
from cdc_tracker.destination.stats import DeliveryStats

PREFIX = "cdc_tracker"


class DaemonCollector(Collector):
    """Exposes one daemon's ``Counters`` and its client's ``DeliveryStats``."""

    def __init__(self, counters: Counters, delivery: DeliveryStats | None) -> None:
        self.counters = counters
        self.delivery = delivery

    def collect(self) -> Iterator[Metric]:
        yield from self._pipeline()
        yield from self._destination()

    def _pipeline(self) -> Iterator[Metric]:
        c = self.counters
        yield _counter("changes_read", "Row changes read from the slot.", c.changes)
        yield _counter("batches", "Batches shipped and acknowledged.", c.batches)
        yield _counter("truncates", "TRUNCATEs of tracked tables seen.", c.truncates)
        calls = CounterMetricFamily(
            f"{PREFIX}_calls_shipped",
            "Calls acknowledged by the destination, by type and event.",
            labels=["type", "event"],
        )
        for (kind, event), count in sorted(c.calls_by_event.items()):
            calls.add_metric([kind, event], count)
        yield calls
        yield _counter_by(
            "dead_letters", "Dead letters stored, by reason.", "reason",
            c.drops_by_reason,
        )  # fmt: skip
        yield _counter_by(
            "lookup_skips",
            "Rules not fired because a lookup found no row (missing: skip), by rule.",
            "rule",
            c.lookup_skips,
        )
        reloads = CounterMetricFamily(
            f"{PREFIX}_rulebook_reloads",
            "Rulebook reloads, by result.",
            labels=["result"],
        )
        reloads.add_metric(["ok"], c.reloads)
        reloads.add_metric(["failed"], c.reload_failures)
        yield reloads
        yield GaugeMetricFamily(
            f"{PREFIX}_slot_lag_bytes",
            "WAL bytes between the server's flush position and what is acknowledged.",
            value=c.lag_bytes,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_read_ahead_bytes",
            "Rows read from the server and not mapped yet, in bytes with their "
            "bookkeeping (at most read_ahead_mb and one row).",
            value=c.read_ahead(),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_missing_tables",
            "Tracked tables the catalog no longer has (renamed or dropped).",
            value=len(c.missing_tables),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_schema_problems",
            "Ways the rulebook stopped fitting the schema while running.",
            value=len(c.schema_problems),
        )
        yield _delay_histogram(c)

    def _destination(self) -> Iterator[Metric]:
        d = self.delivery
        if d is None:
            return
        yield _counter("requests", "HTTP requests sent to the destination.", d.requests)
        yield _counter(
            "retries", "Requests retried after a passing failure.", d.retries
        )
        yield _counter(
            "bytes_sent", "Request body bytes sent, compressed.", d.bytes_sent
        )
        yield _counter_by(
            "destination_errors",
            "Failed requests by HTTP status, or timeout / connection.",
            "status",
            d.errors_by_status,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_destination_paused",
            "1 while the destination refuses our write key or URL.",
            value=1 if d.paused else 0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_destination_refusing",
            "1 while calls the destination refused one after another (400s to "
            "a request's end) are resent as an outage; a lone call refused is a "
            "dead letter at once (see dead_letters_total).",
            value=1 if d.refusing else 0,
        )


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _counter_by(
    name: str, documentation: str, label: str, counts: Mapping[str, int]
) -> CounterMetricFamily:
    """A counter with one label, a sample per key of ``counts``."""
    family = CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


def _delay_histogram(c: Counters) -> HistogramMetricFamily:
    cumulative, running = [], 0
    for bound, count in zip(
        (*DELAY_BUCKETS, float("inf")), c.delay.counts, strict=True
    ):
        running += count
        cumulative.append((_bound(bound), running))
    return HistogramMetricFamily(
        f"{PREFIX}_delivery_delay_seconds",
        "Commit to acknowledged, per transaction with calls.",
        buckets=cumulative,
        sum_value=c.delay.total,
    )


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def render(counters: Counters, delivery: DeliveryStats | None) -> bytes:
    """The Prometheus text exposition of the given counters."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(counters, delivery))
    return generate_latest(registry)
