"""The tracker's web page with 10,000 moves in its store: how long a page takes to serve.

A store (SQLite by default, or ``--db postgresql://...``, which must be empty) gets N moves
(the example move under N ids: 20 requestors, 3 destinations, started over 10 days, one in
ten still running), then the page's routes are served on loopback and each page below
is asked for ``--requests`` times over HTTP, as a browser would (Accept: text/html).

  python -m bench.web_page [--moves 10000] [--requests 30] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web
from rich.console import Console
from rich.table import Table

from bench import machine
from dimsebus.services.tracker import api
from dimsebus.services.tracker.progress import MoveState
from dimsebus.services.tracker.settings import TrackerSettings
from dimsebus.services.tracker.store import open_store
from tests.moves import folded_story

T0 = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
NAMES = uuid.UUID("6f2f9d55-8a59-4c1e-9d0c-31f6d8a1b7e2")
PAGES = {
    "newest 50": "/",
    "page 100 of 200": "/?page=100",
    "outcome completed_with_failures": "/?outcome=completed_with_failures",
    "outcome stalled": "/?outcome=stalled",
    "AE title REQ7": "/?ae=REQ7",
    "one day": "/?since=2026-11-25T00:00&until=2026-11-26T00:00",
    "AE + outcome + day": "/?ae=REQ3&outcome=completed_with_failures&since=2026-11-25T00:00",
}


def moves(count: int) -> list[MoveState]:
    base = folded_story("bench", 8, T0)
    span = dt.timedelta(days=10) / count
    made = []
    for number in range(count):
        started = T0 + span * number
        update: dict[str, object] = {
            "move_id": uuid.uuid5(NAMES, str(number)),
            "requestor_ae_title": f"REQ{number % 20}",
            "destination_ae_title": f"DEST{number % 3}",
            "started_at": started,
            "last_event_at": started + dt.timedelta(seconds=20),
        }
        if number % 10 == 0:
            update.update(final_category=None, final_status=None, expected=None)
        made.append(base.model_copy(update=update))
    return made


def fill(db: str, count: int) -> float:
    store = open_store(db)
    started = time.perf_counter()
    try:
        every = moves(count)
        for at in range(0, count, 1000):
            store.save(every[at : at + 1000], at)
    finally:
        store.close()
    return time.perf_counter() - started


async def measure(db: str, requests: int) -> list[tuple[str, int, float, float]]:
    settings = TrackerSettings(db=db)
    app = web.Application()
    app.add_routes(api.routes(settings))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    results = []
    try:
        async with aiohttp.ClientSession(headers={"Accept": "text/html"}) as session:
            for name, path in PAGES.items():
                times = []
                rows = 0
                for _ in range(requests):
                    began = time.perf_counter()
                    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                        body = await response.text()
                        assert response.status == 200, body[:300]
                    times.append((time.perf_counter() - began) * 1000)
                    rows = body.count('<tr data-move-id="') - 1  # less the row template
                times.sort()
                p95 = times[max(0, round(len(times) * 0.95) - 1)]
                results.append((name, rows, statistics.median(times), p95))
    finally:
        await runner.cleanup()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--db", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = args.db or str(Path(folder) / "tracker.sqlite")
        filled = fill(db, args.moves)
        results = asyncio.run(measure(db, args.requests))
    table = Table(title=f"GET a page of the moves, {args.moves:,} moves in the store")
    for column in ("page", "rows", "median ms", "p95 ms"):
        table.add_column(column, justify="left" if column == "page" else "right")
    for name, rows, median, p95 in results:
        table.add_row(name, str(rows), f"{median:.1f}", f"{p95:.1f}")
    console = Console()
    console.print(table)
    kind = "PostgreSQL" if db.startswith("postgres") else "SQLite"
    console.print(f"{kind}; the store was filled in {filled:.1f} s; {args.requests} requests each")


if __name__ == "__main__":
    with machine.reported():
        main()
