"""The confirm histogram a relay keeps in its outbox is the one /metrics always exported.

``Outbox.remove`` adds each batch's confirm latencies to cumulative ``le`` buckets; it
counts them by bisecting and skips the buckets no latency reached, and the sums must
come out as the earlier count of every latency against every bound did.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dimsebus.services.bus.outbox import CONFIRM_BUCKETS, Outbox, read_relay_stats


def earlier_histogram(latencies: list[float]) -> tuple[tuple[float, float], ...]:
    """The cumulative buckets as the earlier outbox counted them."""
    return (
        *((le, float(sum(latency <= le for latency in latencies))) for le in CONFIRM_BUCKETS),
        (float("inf"), float(len(latencies))),
    )


def test_the_confirm_histogram_is_the_one_it_always_was(tmp_path: Path) -> None:
    # given confirms of many latencies, some on a bucket's bound, removed in batches
    draw = random.Random(21)
    latencies = [draw.choice([0.0005, 0.002, 0.004, 0.05, 0.7, 12.0]) for _ in range(60)]
    latencies += [draw.expovariate(200.0) for _ in range(300)]
    draw.shuffle(latencies)
    box = Outbox(tmp_path / "outbox.sqlite")
    try:
        for start in range(0, len(latencies), 7):
            chunk = latencies[start : start + 7]
            box.remove([start + n for n in range(len(chunk))], chunk)
    finally:
        box.close()
    # then the stored histogram is the cumulative one of them all
    stats = read_relay_stats(tmp_path / "outbox.sqlite")
    assert stats.buckets == earlier_histogram(latencies)
    assert stats.published == len(latencies)
    assert stats.confirm_seconds == pytest.approx(sum(latencies))


def test_rows_removed_without_latencies_count_as_published_only(tmp_path: Path) -> None:
    # (the relay removes rows it found on the log that way: no confirm was timed)
    box = Outbox(tmp_path / "outbox.sqlite")
    try:
        box.remove([1, 2, 3])
        box.remove([4], [0.003])
    finally:
        box.close()
    stats = read_relay_stats(tmp_path / "outbox.sqlite")
    assert stats.published == 4
    assert stats.buckets == earlier_histogram([0.003])
