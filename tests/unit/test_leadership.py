"""``while_active``: terms of office over an in-memory lock, without PostgreSQL.

``MemoryLeadership`` is a ``Leadership`` whose lock is a dict shared by the copies and
whose connection is an object the test can cut; the rest (waiting, watching, standing
by, the fence of each term) is the real code.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dimsebus.services.leadership import Leadership, while_active
from dimsebus.services.sql import Fence


class Connection:
    """The lock's connection: ``cut`` makes its next statement fail, as a dropped one does."""

    def __init__(self, lock: dict[str, Any], holder: str) -> None:
        self.lock, self.holder, self.cut = lock, holder, False

    async def execute(self, statement: str) -> None:
        if self.cut:
            raise ConnectionError("server closed the connection unexpectedly")

    async def close(self) -> None:
        if self.lock.get("holder") is self:
            del self.lock["holder"]  # PostgreSQL drops a closed session's locks


class MemoryLeadership(Leadership):
    """Copies of one service taking turns on ``lock``."""

    def __init__(self, lock: dict[str, Any], name: str) -> None:
        super().__init__("postgresql://memory", "tracker", name, poll=0.01, check=0.01, rest=0.2)
        self.lock = lock

    async def _try(self) -> bool:
        if self._conn is None:
            self._conn = Connection(self.lock, self.holder)
        if "holder" in self.lock:
            return self.lock["holder"] is self._conn
        self.lock["holder"] = self._conn
        self.lock["term"] = self.term = self.lock.get("term", 0) + 1
        self.role = "active"
        return True


async def test_copies_take_turns_and_each_term_has_its_own_fence() -> None:
    lock: dict[str, Any] = {}
    first, second = MemoryLeadership(lock, "t1"), MemoryLeadership(lock, "t2")
    stop = asyncio.Event()
    terms: list[tuple[str, Fence | None]] = []

    def runner(name: str) -> Any:
        async def run(term_stop: asyncio.Event, fence: Fence | None) -> None:
            terms.append((name, fence))
            await term_stop.wait()

        return run

    # given two copies, the first one active
    one = asyncio.create_task(while_active(first, stop, runner("t1")))
    await _until(lambda: first.active)
    two = asyncio.create_task(while_active(second, stop, runner("t2")))
    await asyncio.sleep(0.05)
    assert (first.role, second.role) == ("active", "standby")
    # when the active one's lock connection drops
    first._conn.cut = True
    # then it stands by, and the other one starts the next term
    await _until(lambda: second.active)
    assert first.role == "standby"
    assert [(name, fence.term if fence else None) for name, fence in terms] == [
        ("t1", 1),
        ("t2", 2),
    ]
    # and on stop, both end and the lock is free
    stop.set()
    await asyncio.wait_for(asyncio.gather(one, two), 5)
    assert "holder" not in lock
    assert (first.role, second.role) == ("standby", "standby")


async def test_without_a_leadership_the_service_is_always_active() -> None:
    stop = asyncio.Event()
    seen: list[Fence | None] = []

    async def run(term_stop: asyncio.Event, fence: Fence | None) -> None:
        seen.append(fence)
        assert term_stop is stop

    await while_active(None, stop, run)
    assert seen == [None]


async def _until(check: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"waited {within} s for {check}"
        await asyncio.sleep(0.01)
