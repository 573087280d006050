"""When the relay publishes (``batching.next_step``): at once, the next batch, or not yet."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dimsebus.services.bus.batching import (
    DUTY,
    MAX_GATHER,
    RelayView,
    Step,
    after_gathering,
    gather_for,
    next_step,
)

LIMIT = 1024


def view(
    taken: int = 0,
    refused: int = 0,
    *,
    arrived: bool = False,
    cost: float = 0.0,
    elapsed: float = 0.0,
) -> RelayView:
    return RelayView(taken, refused, arrived, LIMIT, cost=cost, elapsed=elapsed)


def test_an_idle_relay_waits_for_rows() -> None:
    # given a relay whose last look found nothing, and no wake-up since
    # then it waits for a row (no timer of its own)
    assert next_step(view()) is Step.WAIT_FOR_ROWS


def test_a_row_that_arrives_while_idle_is_published_at_once() -> None:
    # given nothing awaiting a confirm, when a row's wake-up comes
    # then the relay publishes now
    assert next_step(view(arrived=True)) is Step.PUBLISH


def test_rows_that_arrived_during_a_batch_are_the_next_batch_at_once() -> None:
    # given a batch of 3 just confirmed, during whose confirms rows arrived
    # then they go out now, as the next batch, with no linger
    assert next_step(view(taken=3, arrived=True)) is Step.PUBLISH


def test_a_settled_batch_with_nothing_new_waits() -> None:
    # given a batch confirmed whole, smaller than the limit, and no row since
    # then the relay waits for the next row
    assert next_step(view(taken=5)) is Step.WAIT_FOR_ROWS


def test_a_full_batch_means_a_backlog_published_without_waiting() -> None:
    # given a batch of the limit's size (the outbox held more), and no wake-up
    # then the rest goes out at once: a wake-up may have been missed, not the rows
    assert next_step(view(taken=LIMIT)) is Step.PUBLISH


def test_refusals_back_off_before_the_rows_are_taken_again() -> None:
    # given a batch of which the broker refused some, even with rows waiting
    # then the relay backs off instead of spinning on the rows it cannot publish
    assert next_step(view(taken=4, refused=1, arrived=True)) is Step.BACK_OFF


def test_after_a_costly_batch_the_next_gathers_a_little_longer() -> None:
    # given a batch that cost 1 ms of CPU and settled 2 ms after it was taken,
    # during which a row arrived
    after = view(taken=1, arrived=True, cost=0.001, elapsed=0.002)
    # then the next batch waits for more rows, up to the cap: cost / DUTY from the start
    assert next_step(after) is Step.GATHER
    assert gather_for(after) == min(MAX_GATHER, 0.001 / DUTY - 0.002)


def test_after_a_costly_batch_the_relay_spaces_first_and_looks_after() -> None:
    # given a costly batch during which no row arrived
    after = view(taken=2, cost=0.001, elapsed=0.002)
    # then it does not sleep until a ring (a wake-up of its own) but the spacing
    assert next_step(after) is Step.GATHER
    # and then publishes the rows that rang meanwhile, or waits for rows if none did
    assert after_gathering(after, arrived=True) is Step.PUBLISH
    assert after_gathering(after, arrived=False) is Step.WAIT_FOR_ROWS
    # and rows known of before the wait are published whatever rang during it
    assert after_gathering(view(arrived=True), arrived=False) is Step.PUBLISH


def test_a_cheap_or_long_batch_is_followed_at_once() -> None:
    # given batches whose cost is already a small share of the time they took
    cheap = view(taken=1, arrived=True, cost=0.0001, elapsed=0.002)
    long = view(taken=50, arrived=True, cost=0.004, elapsed=0.05)
    # then the next one goes out at once
    assert next_step(cheap) is Step.PUBLISH
    assert next_step(long) is Step.PUBLISH


def test_a_relay_behind_never_gathers() -> None:
    # given a full batch, however costly
    # then the rest goes out at once
    assert next_step(view(taken=LIMIT, cost=1.0, elapsed=0.001)) is Step.PUBLISH


@given(
    taken=st.integers(0, 2 * LIMIT),
    refused=st.integers(0, 2 * LIMIT),
    arrived=st.booleans(),
    cost=st.floats(0.0, 10.0),
    elapsed=st.floats(0.0, 10.0),
)
def test_the_relay_never_sleeps_on_rows_it_knows_of(
    taken: int, refused: int, arrived: bool, cost: float, elapsed: float
) -> None:
    # given any settled batch
    settled = view(taken, min(refused, taken), arrived=arrived, cost=cost, elapsed=elapsed)
    step = next_step(settled)
    # then it waits for rows only when it knows of none: no wake-up, no backlog
    if step is Step.WAIT_FOR_ROWS:
        assert not arrived
        assert taken < LIMIT
    # and when it knows of rows and nothing was refused, it publishes them now or
    # after a gathering wait of at most MAX_GATHER
    if (arrived or taken >= LIMIT) and not min(refused, taken):
        assert step in (Step.PUBLISH, Step.GATHER)
    assert 0.0 <= gather_for(settled) <= MAX_GATHER
