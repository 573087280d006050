"""The tracker's replay rate and live latency, against the real broker.

replay   N C-STORE response events of C-MOVEs of 100 instances each are put
         on the log, then a tracker with an empty database folds the whole log;
         events/s = events folded / time until its checkpoint reaches the end.
live     a node-side capture appends responses to the outbox at R/s (the
         same call the DIMSE thread makes); the relay publishes them, the
         tracker folds and commits; latency = commit time - responded_at.
         One run per rate (200 and 1,000 responses/s unless --rate says), each
         in a vhost of its own.

  python -m bench.tracker [--events 100000] [--rate 200 --rate 1000] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

from aio_pika.abc import AbstractConnection
from rich.console import Console
from rich.table import Table

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.log import LogEntry
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.relay import RelayProcess
from dimsebus.services.bus.session import supervised
from dimsebus.services.bus.topology import declare_topology
from dimsebus.services.clock import new_id, utc_now
from dimsebus.services.tracker.app import Tracker, TrackerSettings, follow, run_tracker
from dimsebus.services.tracker.progress import move_key
from dimsebus.services.tracker.store import open_store
from tests.broker import LOCAL_URL, local_rabbitmqctl, private_vhost


def fresh_ids() -> Iterator[UUID]:
    return iter(new_id, None)


def move_events(count: int) -> list[CloudEvent]:
    """About ``count`` events: whole C-MOVEs of 100 instances, as the node publishes them."""
    found: list[CloudEvent] = []
    while len(found) < count:
        story = move_story(node_id="bench", start=utc_now(), ids=fresh_ids(), instances=100)
        found += [e for e in story if move_key(e) is not None]
    return found


async def publish_moves(url: str, count: int, chunk: int = 10_000) -> int:
    """Put about ``count`` events of whole moves on the log; how many.

    Made and published ``chunk`` at a time, and not kept: the tracker, which the bench
    runs in this process, should not pay for collecting the bench's own events (100,000
    events held through the replay cost it 35 us of garbage collection per event).
    """
    published = 0
    async with await connect(url, "dimsebus-bench") as connection:
        channel = await confirming_channel(connection)
        await declare_topology(channel)
        publisher = Publisher(channel, window=512)
        while published < count:
            events = move_events(min(chunk, count - published))
            await publisher.publish_all(events)
            published += len(events)
    return published


async def replay(url: str, count: int, folder: Path) -> tuple[int, float]:
    published = await publish_moves(url, count)
    gc.collect()  # what publishing left is not collected on the tracker's time
    settings = TrackerSettings(
        amqp_url=url, db=str(folder / "replay.sqlite"), outbox_path=folder / "r-outbox.sqlite"
    )
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(run_tracker(settings, stop))
    store = open_store(str(folder / "replay.sqlite"))
    while (store.checkpoint() or 0) < published - 1:  # noqa: ASYNC110 - polling another process's file
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    store.close()
    return published, elapsed


class TimedTracker(Tracker):
    """A tracker that notes, per response, how long after ``responded_at`` it committed."""

    latencies: list[float]

    def handle(self, entries: list[LogEntry], now: Any) -> list[CloudEvent]:
        derived = super().handle(entries, now)
        committed = utc_now()
        for entry in entries:
            if isinstance(entry.event, ev.CStoreResponseReceived):
                self.latencies.append((committed - entry.event.data.responded_at).total_seconds())
        return derived


async def live(url: str, rate: float, seconds: float, folder: Path) -> list[float]:
    settings = TrackerSettings(
        amqp_url=url, db=str(folder / "live.sqlite"), outbox_path=folder / "l-outbox.sqlite"
    )
    node_outbox = Outbox(folder / "node-outbox.sqlite")
    relay = RelayProcess(folder / "node-outbox.sqlite", url, name="dimsebus-bench-node")
    tracker = TimedTracker(
        settings, open_store(str(folder / "live.sqlite")), Outbox(settings.outbox_path)
    )
    tracker.latencies = []
    stop = asyncio.Event()
    follow = asyncio.create_task(_follow_live(tracker, settings, stop))
    await asyncio.sleep(2)  # the tracker catches up with the log
    tracker.latencies.clear()
    template = [e for e in move_events(1) if isinstance(e, ev.CStoreResponseReceived)]
    interval, sent = 1.0 / rate, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        event = template[sent % len(template)]
        now = utc_now()
        data = event.data.model_copy(
            update={"responded_at": now, "affected_sop_instance_uid": f"1.2.3.{sent}"}
        )
        fresh = event.model_copy(update={"id": new_id(), "time": now, "data": data})
        await asyncio.to_thread(node_outbox.append, [fresh])  # what the DIMSE thread does
        sent += 1
        await asyncio.sleep(max(0.0, started + sent * interval - time.perf_counter()))
    while len(tracker.latencies) < sent:  # noqa: ASYNC110 - the tracker runs on this loop
        await asyncio.sleep(0.1)
    stop.set()
    await follow
    relay.stop()
    return tracker.latencies


async def _follow_live(tracker: Tracker, settings: TrackerSettings, stop: asyncio.Event) -> None:
    async def session(connection: AbstractConnection, stop: asyncio.Event) -> None:
        await follow(tracker, settings, connection, stop, None)

    with contextlib.suppress(asyncio.CancelledError):
        await supervised(settings.amqp_url, "dimsebus-bench-tracker", session, stop)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, action="append", help="responses/s (repeatable)")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    rates: list[float] = args.rate or [200.0, 1000.0]
    base = os.environ.get("AMQP_URL", LOCAL_URL)
    runs: list[tuple[float, list[float]]] = []
    with tempfile.TemporaryDirectory() as folder:
        with private_vhost(base, local_rabbitmqctl()) as url:
            count, elapsed = asyncio.run(replay(url, args.events, Path(folder)))
        for n, rate in enumerate(rates):
            with private_vhost(base, local_rabbitmqctl()) as url:
                place = Path(folder) / f"live-{n}"
                place.mkdir()
                runs.append((rate, asyncio.run(live(url, rate, args.seconds, place))))
    Console().print(table(count, elapsed, runs, args.seconds))


def table(
    count: int, elapsed: float, runs: list[tuple[float, list[float]]], seconds: float
) -> Table:
    """The replay rate, and the latency percentiles of each live rate."""
    out = Table(title="tracker")
    for column in ("measure", "value"):
        out.add_column(column, justify="left" if column == "measure" else "right")
    out.add_row(
        f"replay: events folded from the stream ({count:,} events)",
        f"{count / elapsed:,.0f} events/s",
    )
    for rate, latencies in runs:
        cuts = statistics.quantiles(latencies, n=100)
        for name, cut in (("p50", cuts[49]), ("p99", cuts[98])):
            out.add_row(
                f"live at {rate:,.0f} responses/s: {name} RSP -> committed",
                f"{cut * 1000:.1f} ms",
            )
        out.add_row(
            f"live at {rate:,.0f} responses/s: responses measured (rate reached)",
            f"{len(latencies)} ({len(latencies) / seconds:,.0f}/s)",
        )
    return out


if __name__ == "__main__":
    main()
