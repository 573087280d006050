"""Prometheus metrics of the services, and collectors that read state when scraped.

Counters and histograms that code increments live in the process's default
registry. Values that are state rather than events (outbox depth, spool
depth, moves in progress) are read at scrape time by per-service collectors.
The relay runs in a child process, so it writes its counts into the outbox
file (``Outbox.record_published``) and the service's collector reads them.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from dimsebus.schemas.status import Service, describe_status
from dimsebus.services.bus.outbox import CONFIRM_BUCKETS, read_relay_stats

_FOLD_AT = 4096
ROUND_TRIP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class CStoreTally(Collector):
    """The node's C-STORE-RSP metrics, noted on pynetdicom's threads and counted when scraped.

    ``note`` is one deque append: the DIMSE thread pays no metrics cost (a label
    lookup, a status classification and a histogram update per response, each under
    a lock). ``collect`` folds what was noted into ``dimsebus_cstore_responses_total``
    by category and the ``dimsebus_cstore_round_trip_seconds`` histogram.
    """

    def __init__(self, classify: Callable[[int], str]) -> None:
        self._classify = classify
        self._noted: deque[tuple[int | str, float | None]] = deque()
        self._lock = threading.Lock()
        self._categories: dict[str, float] = {}
        self._buckets = [0.0] * (len(ROUND_TRIP_BUCKETS) + 1)
        self._seconds = 0.0

    def note(self, outcome: int | str, round_trip: float | None) -> None:
        """A response's Status (or ``missing``/``invalid``), and its round trip if timed."""
        self._noted.append((outcome, round_trip))
        if len(self._noted) >= _FOLD_AT:  # never scraped: count now and then, not grow
            self._fold()

    def _fold(self) -> None:
        with self._lock:
            while self._noted:
                outcome, round_trip = self._noted.popleft()
                category = self._classify(outcome) if isinstance(outcome, int) else outcome
                self._categories[category] = self._categories.get(category, 0.0) + 1
                if round_trip is not None:
                    self._seconds += round_trip
                    self._buckets[_bucket(round_trip)] += 1

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        self._fold()
        with self._lock:
            responses = CounterMetricFamily(
                "dimsebus_cstore_responses",
                "C-STORE-RSPs the node received, and requests that got none, by category",
                labels=["category"],
            )
            for category, count in sorted(self._categories.items()):
                responses.add_metric([category], count)
            cumulative, buckets = 0.0, []
            for le, count in zip((*ROUND_TRIP_BUCKETS, "+Inf"), self._buckets, strict=True):
                cumulative += count
                buckets.append((str(le), cumulative))
            round_trips = HistogramMetricFamily(
                "dimsebus_cstore_round_trip_seconds",
                "Time from a C-STORE-RQ sent by the node to its C-STORE-RSP",
                buckets=buckets,
                sum_value=self._seconds,
            )
        yield responses
        yield round_trips


def _bucket(seconds: float) -> int:
    """The index of the first bucket whose upper bound ``le`` holds ``seconds`` (+Inf last)."""
    return bisect.bisect_left(ROUND_TRIP_BUCKETS, seconds)


def storage_category(status: int) -> str:
    return describe_status(status, Service.STORAGE).category.value


CSTORE = CStoreTally(storage_category)
REGISTRY.register(CSTORE)
EVENTS_PUBLISHED = Counter(
    "dimsebus_events_published", "Events and commands published directly with confirms"
)
PUBLISH_CONFIRM = Histogram(
    "dimsebus_publish_confirm_seconds",
    "Time from a direct publish to the broker's confirm",
    buckets=CONFIRM_BUCKETS,
)
MESSAGES_PARKED = Counter(
    "dimsebus_messages_parked", "Dead letters: deliveries a consumer parked", ["queue"]
)
RETRIES = Counter("dimsebus_retries", "The retrier's decisions", ["decision"])
RESEND_COMMANDS = Counter("dimsebus_resend_commands", "Resend commands the node executed")
TRACKER_APPLIED = Counter("dimsebus_tracker_events_applied", "Log entries the tracker read")
AUDIT_RECORDS = Counter("dimsebus_audit_records", "Records appended to the audit trail")
AUDIT_SENT = Counter("dimsebus_audit_messages_sent", "Audit messages the collector accepted")


def observe_publish(seconds: float) -> None:
    """A direct publish was confirmed after ``seconds``."""
    EVENTS_PUBLISHED.inc()
    PUBLISH_CONFIRM.observe(seconds)


class OutboxCollector(Collector):
    """An outbox's depth, and what its relay published and how fast it was confirmed."""

    def __init__(self, path: Path, prefix: str = "dimsebus_outbox") -> None:
        self.path = path
        self.prefix = prefix

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        stats = read_relay_stats(self.path)
        yield GaugeMetricFamily(
            f"{self.prefix}_depth", "Events spooled and not yet confirmed", value=stats.depth
        )
        yield CounterMetricFamily(
            f"{self.prefix}_published",
            "Events the relay published and the broker confirmed",
            value=stats.published,
        )
        yield HistogramMetricFamily(
            f"{self.prefix}_confirm_seconds",
            "Time from the relay's publish to the broker's confirm",
            buckets=[("+Inf" if le == float("inf") else str(le), n) for le, n in stats.buckets],
            sum_value=stats.confirm_seconds,
        )


class GaugeCollector(Collector):
    """Gauges whose values a function reads when scraped."""

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]]) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (description, read) in self.gauges.items():
            yield GaugeMetricFamily(name, description, value=read())
