"""The C-STORE tally: noted on the DIMSE thread, counted when scraped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from dimsebus.services.metrics import CStoreTally, storage_category


def scrape(tally: CStoreTally) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(tally)
    samples: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_responses_are_counted_by_category_and_timed() -> None:
    # given responses noted as the DIMSE thread notes them
    tally = CStoreTally(storage_category)
    noted: list[tuple[int | str, float | None]] = [
        (0x0000, 0.001),
        (0xB000, 0.003),
        (0xA700, 0.2),
        ("missing", None),
    ]
    for outcome, seconds in noted:
        tally.note(outcome, seconds)
    # when scraped (twice: nothing is counted twice)
    scrape(tally)
    samples = scrape(tally)
    # then each Status counts under its category, and the round trips in the histogram
    assert samples['dimsebus_cstore_responses_total{category="success"}'] == 1
    assert samples['dimsebus_cstore_responses_total{category="warning"}'] == 1
    assert samples['dimsebus_cstore_responses_total{category="failure"}'] == 1
    assert samples['dimsebus_cstore_responses_total{category="missing"}'] == 1
    assert samples['dimsebus_cstore_round_trip_seconds_bucket{le="0.002"}'] == 1
    assert samples['dimsebus_cstore_round_trip_seconds_bucket{le="0.005"}'] == 2
    assert samples['dimsebus_cstore_round_trip_seconds_bucket{le="+Inf"}'] == 3
    assert samples["dimsebus_cstore_round_trip_seconds_count"] == 3
    assert abs(samples["dimsebus_cstore_round_trip_seconds_sum"] - 0.204) < 1e-9


def test_a_tally_never_scraped_does_not_grow() -> None:
    tally = CStoreTally(storage_category)
    for _ in range(10_000):
        tally.note(0, 0.001)
    assert len(tally._noted) < 4096
    assert scrape(tally)['dimsebus_cstore_responses_total{category="success"}'] == 10_000
