"""Prometheus metrics of the services, and collectors that read state when scraped.

Counters and histograms that code increments live in the process's default
registry. Values that are state rather than events (outbox depth, spool
depth, moves in progress) are read at scrape time by per-service collectors.
The relay runs in a child process, so it writes its counts into the outbox
file (``Outbox.record_published``) and the service's collector reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from services.bus.outbox import CONFIRM_BUCKETS, read_relay_stats

CSTORE_ROUND_TRIP = Histogram(
    "dimsebus_cstore_round_trip_seconds",
    "Time from a C-STORE-RQ sent by the node to its C-STORE-RSP",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CSTORE_RESPONSES = Counter(
    "dimsebus_cstore_responses",
    "C-STORE-RSPs the node received, and requests that got none, by category",
    ["category"],
)
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
