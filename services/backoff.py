"""One back-off for every retry loop: delays that grow to a cap, with jitter, a budget and a stop.

A loop that reconnects, republishes or requeues waits ``Backoff.wait()`` between
tries and calls ``reset()`` once a try went well. The delays double from ``first``
up to ``cap``; each is shortened by up to ``jitter`` of itself, so that the clients
of one broker that came back do not all knock at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from dimsebus.services.clock import sleep_unless


def delay_for(attempt: int, first: float, cap: float, factor: float = 2.0) -> float:
    """Pure: seconds to wait after ``attempt`` earlier waits (0 for the first), before jitter."""
    return float(min(first * factor ** min(attempt, 64), cap))


def jittered(seconds: float, jitter: float, draw: Callable[[], float] = random.random) -> float:
    """``seconds`` shortened by a random share of at most ``jitter`` (0 <= jitter < 1)."""
    return seconds * (1.0 - jitter * draw())


class Backoff:
    """The delays of one retry loop, and the waiting itself."""

    attempts: int  # waits since the last reset
    waited: float  # their seconds
    upcoming: float  # what the next wait sleeps

    def __init__(
        self,
        first: float = 0.5,
        cap: float = 10.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.1,
        budget: float | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        """``budget``: seconds of waiting in all (until ``reset``) before ``wait`` gives up."""
        if not 0 < first <= cap or factor < 1 or not 0 <= jitter < 1:
            raise ValueError(
                f"back-off first={first}, cap={cap}, factor={factor}, jitter={jitter}: "
                "need 0 < first <= cap, factor >= 1, 0 <= jitter < 1"
            )
        self.first, self.cap, self.factor, self.jitter = first, cap, factor, jitter
        self.budget = budget
        self._draw = draw
        self.reset()

    def reset(self) -> None:
        """A try went well: the next wait is a short one again, with the whole budget."""
        self.attempts = 0
        self.waited = 0.0
        self.upcoming = self._delay()

    @property
    def exhausted(self) -> bool:
        """Whether the next wait would go past the budget."""
        return self.budget is not None and self.waited + self.upcoming > self.budget

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Sleep ``upcoming`` seconds; False, without waiting for them, if ``stop`` is set
        or the budget is ``exhausted``: then the loop should not try again."""
        if self.exhausted:
            return False
        seconds = self.upcoming
        self.attempts += 1
        self.waited += seconds
        self.upcoming = self._delay()
        if stop is None:
            await asyncio.sleep(seconds)
            return True
        return not await sleep_unless(stop, seconds)

    def _delay(self) -> float:
        base = delay_for(self.attempts, self.first, self.cap, self.factor)
        return jittered(base, self.jitter, self._draw)
