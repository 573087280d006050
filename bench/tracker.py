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
                          [--no-replay | --no-live]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
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
from dimsebus.services.tracker.app import (
    Tracker,
    TrackerSettings,
    collect_less_often,
    follow,
    run_tracker,
)
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


async def replay(url: str, count: int, folder: Path) -> tuple[int, float, float]:
    """Events replayed, seconds until the checkpoint reached the last, and this process's
    CPU seconds meanwhile (the tracker's, and the bench's polling of the checkpoint)."""
    published = await publish_moves(url, count)
    gc.collect()  # what publishing left is not collected on the tracker's time
    collect_less_often()  # as `dimsebus tracker` does
    settings = TrackerSettings(
        amqp_url=url, db=str(folder / "replay.sqlite"), outbox_path=folder / "r-outbox.sqlite"
    )
    stop = asyncio.Event()
    started, cpu = time.perf_counter(), time.process_time()
    task = asyncio.create_task(run_tracker(settings, stop))
    store = open_store(str(folder / "replay.sqlite"))
    while (store.checkpoint() or 0) < published - 1:  # noqa: ASYNC110 - polling another process's file
        await asyncio.sleep(0.05)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    stop.set()
    await task
    store.close()
    return published, elapsed, cpu


class TimedTracker(Tracker):
    """A tracker that notes, per response, how long after ``responded_at`` it took the
    response's batch to fold (``taken``), and committed it (``latencies``)."""

    latencies: list[float]
    taken: list[float]

    def handle(self, entries: list[LogEntry], now: Any) -> list[CloudEvent]:
        taken = utc_now()
        derived = super().handle(entries, now)
        committed = utc_now()
        for entry in entries:
            if isinstance(entry.event, ev.CStoreResponseReceived):
                responded = entry.event.data.responded_at
                self.taken.append((taken - responded).total_seconds())
                self.latencies.append((committed - responded).total_seconds())
        return derived


async def live(
    url: str, rate: float, seconds: float, folder: Path
) -> tuple[list[float], list[float]]:
    """Seconds from each response to its commit, and to its batch being taken to fold."""
    settings = TrackerSettings(
        amqp_url=url, db=str(folder / "live.sqlite"), outbox_path=folder / "l-outbox.sqlite"
    )
    Outbox(folder / "node-outbox.sqlite").close()  # made before the relay opens it
    relay = RelayProcess(folder / "node-outbox.sqlite", url, name="dimsebus-bench-node")
    tracker = TimedTracker(
        settings, open_store(str(folder / "live.sqlite")), Outbox(settings.outbox_path)
    )
    tracker.latencies, tracker.taken = [], []
    collect_less_often()  # as `dimsebus tracker` does
    stop = asyncio.Event()
    follow = asyncio.create_task(_follow_live(tracker, settings, stop))
    await asyncio.sleep(2)  # the tracker catches up with the log
    tracker.latencies.clear()
    tracker.taken.clear()
    # The node's side runs in a process of its own, as a node does: sharing this loop, it
    # reached ~860 of 1,000 responses/s (an append handed to a thread per response).
    receiving, sending = multiprocessing.get_context("spawn").Pipe(duplex=False)
    node = multiprocessing.get_context("spawn").Process(
        target=respond, args=(folder / "node-outbox.sqlite", rate, seconds, sending)
    )
    node.start()
    sent: int = await asyncio.to_thread(receiving.recv)
    await asyncio.to_thread(node.join)
    while len(tracker.latencies) < sent:  # noqa: ASYNC110 - the tracker runs on this loop
        await asyncio.sleep(0.1)
    stop.set()
    await follow
    relay.stop()
    return tracker.latencies, tracker.taken


def respond(outbox_path: Path, rate: float, seconds: float, done: Connection) -> None:
    """Append C-STORE responses to the node's outbox at ``rate``/s for ``seconds``, one per
    call, as the DIMSE thread does; send how many through ``done``."""
    outbox = Outbox(outbox_path)
    template = [e for e in move_events(1) if isinstance(e, ev.CStoreResponseReceived)]
    interval, sent = 1.0 / rate, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        event = template[sent % len(template)]
        now = utc_now()
        data = event.data.model_copy(
            update={"responded_at": now, "affected_sop_instance_uid": f"1.2.3.{sent}"}
        )
        outbox.append([event.model_copy(update={"id": new_id(), "time": now, "data": data})])
        sent += 1
        time.sleep(max(0.0, started + sent * interval - time.perf_counter()))
    outbox.close()
    done.send(sent)


async def _follow_live(tracker: Tracker, settings: TrackerSettings, stop: asyncio.Event) -> None:
    async def session(connection: AbstractConnection, stop: asyncio.Event) -> None:
        await follow(tracker, settings, connection, stop, None)

    with contextlib.suppress(asyncio.CancelledError):
        await supervised(settings.amqp_url, "dimsebus-bench-tracker", session, stop)


Run = tuple[float, list[float], list[float]]  # rate, RSP -> committed, RSP -> taken


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, action="append", help="responses/s (repeatable)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--no-replay", action="store_true", help="live runs only")
    parser.add_argument("--no-live", action="store_true", help="the replay only")
    args = parser.parse_args()
    rates: list[float] = [] if args.no_live else (args.rate or [200.0, 1000.0])
    base = os.environ.get("AMQP_URL", LOCAL_URL)
    runs: list[Run] = []
    replayed: tuple[int, float, float] | None = None
    with tempfile.TemporaryDirectory() as folder:
        if not args.no_replay:
            with private_vhost(base, local_rabbitmqctl()) as url:
                replayed = asyncio.run(replay(url, args.events, Path(folder)))
        for n, rate in enumerate(rates):
            with private_vhost(base, local_rabbitmqctl()) as url:
                place = Path(folder) / f"live-{n}"
                place.mkdir()
                runs.append((rate, *asyncio.run(live(url, rate, args.seconds, place))))
    Console().print(table(replayed, runs, args.seconds))


def table(replayed: tuple[int, float, float] | None, runs: list[Run], seconds: float) -> Table:
    """The replay rate, and the latency percentiles of each live rate.

    "taken" is when the tracker took the response's batch to fold: before it, the
    relay, the broker and the tracker's reader; after it, the fold and the commit."""
    out = Table(title="tracker")
    for column in ("measure", "value"):
        out.add_column(column, justify="left" if column == "measure" else "right")
    if replayed is not None:
        count, elapsed, cpu = replayed
        out.add_row(
            f"replay: events folded from the stream ({count:,} events)",
            f"{count / elapsed:,.0f} events/s",
        )
        out.add_row("replay: the tracker's CPU per event", f"{cpu / count * 1e6:.0f} us")
    for rate, latencies, taken in runs:
        for what, values in (("taken by the tracker", taken), ("committed", latencies)):
            cuts = statistics.quantiles(values, n=100)
            for name, cut in (("p50", cuts[49]), ("p99", cuts[98])):
                out.add_row(
                    f"live at {rate:,.0f} responses/s: {name} RSP -> {what}",
                    f"{cut * 1000:.1f} ms",
                )
        out.add_row(
            f"live at {rate:,.0f} responses/s: responses measured (rate reached)",
            f"{len(latencies)} ({len(latencies) / seconds:,.0f}/s)",
        )
    return out


if __name__ == "__main__":
    main()
