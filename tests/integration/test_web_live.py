"""The web page's live feed over real HTTP: a commit reaches an open page within 1 s, and a
page that stops reading neither slows the tracker's commits nor grows without bound."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from dimsebus.services.tracker import api
from dimsebus.services.tracker.progress import MoveState
from dimsebus.services.tracker.settings import TrackerSettings
from dimsebus.services.tracker.views import live_row
from dimsebus.services.tracker.web.live import Live
from tests.moves import folded_story

T0 = dt.datetime(2026, 11, 30, 8, tzinfo=dt.UTC)
STALL = dt.timedelta(minutes=5)


EXAMPLE = folded_story("live", 20, T0)


def a_move(number: int) -> MoveState:
    return EXAMPLE.model_copy(update={"move_id": uuid.uuid5(uuid.NAMESPACE_OID, str(number))})


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Live]]:
    """The tracker's routes with a live feed, on loopback; the feed closed afterwards."""
    live = Live(lambda move: live_row(move, T0, STALL))
    live.start()
    app = web.Application()
    app.add_routes(api.routes(TrackerSettings(db=str(tmp_path / "tracker.sqlite")), live))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", live
    finally:
        live.close()
        await asyncio.wait_for(runner.cleanup(), 10)


async def test_without_a_live_feed_the_page_is_told_not_to_ask(tmp_path: Path) -> None:
    # given the routes without a feed (the demo's --serve, after the tracker stopped)
    app = web.Application()
    app.add_routes(api.routes(TrackerSettings(db=str(tmp_path / "tracker.sqlite"))))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            # then /live answers 204, which stops a browser's EventSource reconnecting
            async with session.get(base + "/live") as response:
                assert response.status == 204
            async with session.get(base + "/", headers={"Accept": "text/html"}) as response:
                assert response.status == 200
                assert "as it stood when served" in await response.text()
    finally:
        await runner.cleanup()


async def _next_move(response: aiohttp.ClientResponse) -> str:
    """The data line of the next ``move`` event on the stream."""
    kind = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[len("event: ") :]

        elif line.startswith("data: ") and kind == "move":
            return line[len("data: ") :]
    raise AssertionError("the stream ended")


async def test_a_commit_reaches_an_open_page_within_a_second(served: tuple[str, Live]) -> None:
    base, live = served
    async with aiohttp.ClientSession() as session, session.get(base + "/live") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        await response.content.readline()  # "retry: 2000": the page is subscribed
        await _until(lambda: len(live.subscribers) == 1)
        # when the tracker's thread commits a move
        committed = time.monotonic()
        threading.Thread(target=live.committed, args=([a_move(1)],)).start()
        data = await asyncio.wait_for(_next_move(response), 5)
        latency = time.monotonic() - committed
    # then the page has its row within 1 s
    assert str(a_move(1).move_id) in data
    assert '"listed": true' in data
    assert latency < 1.0, f"{latency:.3f} s from commit to the page"


async def test_a_page_that_stops_reading_never_slows_the_tracker(
    served: tuple[str, Live],
) -> None:
    base, live = served
    host, port = base.removeprefix("http://").split(":")
    # given a page that subscribes and then reads nothing, and one that reads all along
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /live HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    last = str(a_move(99_999).move_id)
    async with aiohttp.ClientSession() as session, session.get(base + "/live") as response:
        await response.content.readline()
        await _until(lambda: len(live.subscribers) == 2)
        reading = asyncio.create_task(_read_until(response, last))
        # when the tracker commits 5,000 moves, in batches of 50, from its thread
        took: list[float] = []

        def commit() -> None:
            for batch in range(100):
                began = time.monotonic()
                live.committed([a_move(batch * 50 + n) for n in range(50)])
                took.append(time.monotonic() - began)

        thread = threading.Thread(target=commit)
        thread.start()
        await asyncio.to_thread(thread.join)
        # then every commit returned at once: none waited on a page (on the loaded
        # machine a commit shares the interpreter with the feed's work, so "at once" is
        # generous; a commit that waited on the silent page would never return)
        assert sum(took) < 5.0, f"100 commits took {sum(took):.3f} s"
        # and the page that does not read holds at most its limit (test_web_page: over
        # it, it is told to start over)
        assert len(live.subscribers) == 2
        assert all(len(s.rows) <= live.limit for s in live.subscribers)
        # and once the flood is handed out (over the limit: each page was told to start
        # over), the reading page gets the next commit as it is
        await _until(lambda: live._flush is None and not live._changed)
        live.committed([a_move(99_999)])
        await asyncio.wait_for(reading, 10)
    writer.close()


async def _read_until(response: aiohttp.ClientResponse, move_id: str) -> None:
    while move_id not in await _next_move(response):
        pass


async def _until(condition: object, within: float = 5.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - waiting for the server's side of a request
            await asyncio.sleep(0.01)
