"""The tracker's replay rate and live latency, against the real broker.

replay   N C-STORE response events of C-MOVEs of 100 instances each are put
         on the log, then a tracker with an empty database folds the whole log;
         events/s = events folded / time until its checkpoint reaches the end.
         Each log is replayed twice, alternately over the stream protocol and over
         AMQP 0-9-1 (the baseline). A log is written in publishes of --log-batch
         events (repeatable; default 1, 4 and 100): 1 is one confirmed publish at a
         time, 4 about what a node's relay sends a batch at full C-STORE speed, 100
         a relay catching up. The broker stores what it receives together as one
         chunk, and a reader pays per chunk as well as per event.
live     a node-side capture appends responses to the outbox at R/s (the
         same call the DIMSE thread makes); the relay publishes them, the
         tracker folds and commits; latency = commit time - responded_at.
         One run per rate (200 and 1,000 responses/s unless --rate says), each
         in a vhost of its own.

  python -m bench.tracker [--events 100000] [--rate 200 --rate 1000] [--seconds 15]
                          [--log-batch 1 --log-batch 4 --log-batch 100]
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
from typing import Any, Literal
from uuid import UUID

from aio_pika.abc import AbstractConnection
from rich.console import Console
from rich.table import Table

from bench import machine
from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story
from dimsebus.services.bus.codec import outgoing_event
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


async def publish_moves(url: str, count: int, batch: int = 1, chunk: int = 10_000) -> int:
    """Put about ``count`` events of whole moves on the log, ``batch`` to a publish (one
    write, as the relay sends a batch; 1: each on its own); how many.

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
            if batch == 1:
                await publisher.publish_all(events)
            else:
                for at in range(0, len(events), batch):
                    part = [outgoing_event(e) for e in events[at : at + batch]]
                    await publisher.send_batch(part)
            published += len(events)
    return published


async def replay(
    url: str, published: int, folder: Path, protocol: Literal["stream", "amqp"] = "stream"
) -> tuple[float, float]:
    """Seconds until a tracker with an empty database, reading the log over ``protocol``,
    had its checkpoint at the last of ``published`` events, and this process's CPU seconds
    meanwhile (the tracker's, and the bench's polling of the checkpoint)."""
    gc.collect()  # what publishing left is not collected on the tracker's time
    collect_less_often()  # as `dimsebus tracker` does
    db = str(folder / f"replay-{protocol}.sqlite")
    settings = TrackerSettings(
        amqp_url=url,
        db=db,
        outbox_path=folder / f"r-outbox-{protocol}.sqlite",
        log_protocol=protocol,
    )
    stop = asyncio.Event()
    started, cpu = time.perf_counter(), time.process_time()
    task = asyncio.create_task(run_tracker(settings, stop))
    store = open_store(db)
    while (store.checkpoint() or 0) < published - 1:  # noqa: ASYNC110 - polling another process's file
        await asyncio.sleep(0.05)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    stop.set()
    await task
    store.close()
    return elapsed, cpu


Replayed = tuple[int, int, str, float, float]  # log batch, events, protocol, seconds, CPU


async def replays(url: str, count: int, batch: int, rounds: int, folder: Path) -> list[Replayed]:
    """The log written ``batch`` to a publish, replayed ``rounds`` times over each protocol,
    alternating which goes first."""
    published = await publish_moves(url, count, batch)
    done: list[Replayed] = []
    for n in range(rounds):
        order: tuple[Literal["stream", "amqp"], ...] = ("stream", "amqp")
        order = order if n % 2 == 0 else order[::-1]
        for protocol in order:
            place = folder / f"replay-{batch}-{n}-{protocol}"
            place.mkdir()
            seconds, cpu = await replay(url, published, place, protocol)
            done.append((batch, published, protocol, seconds, cpu))
    return done


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
    outbox = Outbox(outbox_path, dicom_path=True)
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
    parser.add_argument(
        "--log-batch", type=int, action="append", help="events per publish to the log (repeatable)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="replays of each log, per protocol")
    parser.add_argument("--no-replay", action="store_true", help="live runs only")
    parser.add_argument("--no-live", action="store_true", help="the replay only")
    args = parser.parse_args()
    rates: list[float] = [] if args.no_live else (args.rate or [200.0, 1000.0])
    base = os.environ.get("AMQP_URL", LOCAL_URL)
    runs: list[Run] = []
    replayed: list[Replayed] = []
    with tempfile.TemporaryDirectory() as folder:
        for batch in [] if args.no_replay else (args.log_batch or [1, 4, 100]):
            with private_vhost(base, local_rabbitmqctl()) as url:
                replayed += asyncio.run(replays(url, args.events, batch, args.rounds, Path(folder)))
        for n, rate in enumerate(rates):
            with private_vhost(base, local_rabbitmqctl()) as url:
                place = Path(folder) / f"live-{n}"
                place.mkdir()
                runs.append((rate, *asyncio.run(live(url, rate, args.seconds, place))))
    Console().print(table(replayed, runs, args.seconds))


def table(replayed: list[Replayed], runs: list[Run], seconds: float) -> Table:
    """The replay rates, and the latency percentiles of each live rate.

    A replay row is the median of its rounds, with their range, and the ratio of the
    stream protocol's rate to AMQP's (the median of each round's pair). "taken" is when
    the tracker took the response's batch to fold: before it, the relay, the broker and
    the tracker's reader; after it, the fold and the commit."""
    out = Table(title=f"tracker (load {os.getloadavg()[0]:.2f})")
    for column in ("measure", "value"):
        out.add_column(column, justify="left" if column == "measure" else "right")
    for batch in dict.fromkeys(r[0] for r in replayed):
        mine = [r for r in replayed if r[0] == batch]
        count = mine[0][1]
        rates = {
            protocol: [c / s for b, c, p, s, _ in mine if p == protocol]
            for protocol in ("stream", "amqp")
        }
        for protocol, label in (("stream", "stream protocol"), ("amqp", "AMQP 0-9-1")):
            values = rates[protocol]
            cpu = statistics.median(u / c for b, c, p, s, u in mine if p == protocol)
            out.add_row(
                f"replay, log written {batch} per publish ({count:,} events), over {label}",
                f"{statistics.median(values):,.0f} events/s "
                f"({min(values):,.0f}-{max(values):,.0f}), {cpu * 1e6:.0f} us CPU/event",
            )
        pairs = zip(rates["stream"], rates["amqp"], strict=True)
        ratio = statistics.median(s / a for s, a in pairs)
        out.add_row(f"replay, log written {batch} per publish: stream / AMQP", f"{ratio:.2f}x")
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
    with machine.reported():
        main()
