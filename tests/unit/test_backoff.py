"""The one back-off: delays double to a cap, jitter shortens them, a budget or a stop ends it."""

from __future__ import annotations

import asyncio
import time

import pytest

from dimsebus.services.backoff import Backoff, delay_for, jittered
from dimsebus.services.bus.consumer import requeue_delay


def test_delays_double_from_the_first_up_to_the_cap() -> None:
    assert [delay_for(n, 0.5, 10.0) for n in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert delay_for(10_000, 0.5, 10.0) == 10.0  # no overflow however long it lasts
    assert [delay_for(n, 1.0, 100.0, factor=3) for n in range(3)] == [1, 3, 9]


def test_the_consumer_requeues_on_the_same_curve() -> None:
    assert [requeue_delay(n) for n in range(6)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999])
def test_jitter_only_shortens_and_by_at_most_its_share(draw: float) -> None:
    seconds = jittered(4.0, 0.25, lambda: draw)
    assert 3.0 <= seconds <= 4.0
    assert seconds == pytest.approx(4.0 * (1 - 0.25 * draw))


async def test_each_wait_sleeps_the_upcoming_delay_and_grows_it() -> None:
    # given a back-off without jitter, of milliseconds
    backoff = Backoff(0.001, 0.004, jitter=0.0)
    slept = []
    for _ in range(4):
        slept.append(backoff.upcoming)
        assert await backoff.wait()
    # then each wait slept the delay announced, doubling up to the cap
    assert slept == [0.001, 0.002, 0.004, 0.004]
    assert backoff.attempts == 4
    assert backoff.waited == pytest.approx(0.011)


async def test_reset_starts_over_short_with_the_whole_budget() -> None:
    backoff = Backoff(0.001, 1.0, jitter=0.0, budget=0.0035)
    assert await backoff.wait()
    assert await backoff.wait()
    assert backoff.exhausted  # 0.003 waited, 0.004 next
    backoff.reset()
    assert (backoff.attempts, backoff.waited, backoff.upcoming) == (0, 0.0, 0.001)
    assert not backoff.exhausted


async def test_a_spent_budget_ends_the_loop_without_waiting() -> None:
    # given a budget that one wait of 60 s would exceed
    backoff = Backoff(60.0, 60.0, budget=30.0)
    started = time.monotonic()
    # then wait says "give up" at once
    assert backoff.exhausted
    assert await backoff.wait() is False
    assert time.monotonic() - started < 1.0
    assert backoff.attempts == 0


async def test_a_zero_budget_never_waits() -> None:
    backoff = Backoff(0.1, 5.0, budget=0.0)
    assert await backoff.wait() is False


async def test_stop_ends_a_wait_early() -> None:
    # given a loop waiting 60 s
    stop = asyncio.Event()
    backoff = Backoff(60.0, 60.0)
    waiting = asyncio.create_task(backoff.wait(stop))
    await asyncio.sleep(0)
    # when it is stopped
    stop.set()
    # then the wait ends now, saying "do not try again"
    assert await asyncio.wait_for(waiting, 5.0) is False


async def test_a_wait_that_was_not_stopped_says_try_again() -> None:
    assert await Backoff(0.001, 0.001).wait(asyncio.Event()) is True


async def test_jitter_is_drawn_for_each_delay() -> None:
    draws = iter([0.0, 1.0, 0.5])
    backoff = Backoff(0.001, 0.008, jitter=0.5, draw=lambda: next(draws))
    announced = [backoff.upcoming]
    for _ in range(2):
        await backoff.wait()
        announced.append(backoff.upcoming)
    # 1 ms drawn 0 (whole), 2 ms drawn 1 (halved), 4 ms drawn 0.5 (a quarter less)
    assert announced == pytest.approx([0.001, 0.001, 0.003])


@pytest.mark.parametrize(
    ("first", "cap", "factor", "jitter"),
    [(0, 1, 2, 0), (2, 1, 2, 0), (1, 2, 0.5, 0), (1, 2, 2, 1.0), (1, 2, 2, -0.1)],
)
def test_settings_that_make_no_back_off_are_refused(
    first: float, cap: float, factor: float, jitter: float
) -> None:
    with pytest.raises(ValueError, match="back-off"):
        Backoff(first, cap, factor=factor, jitter=jitter)
