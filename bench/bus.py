"""Publish and consume rates of the dimsebus bus beside raw aio-pika, in one run.

Same broker, same message size, same exchange and queue types, same window:
  publish  dimsebus Publisher (pydantic encode + confirms, window W), and the
           relay's batches (pydantic encode, one write per batch, each confirmed)
           vs raw aio-pika publishing the same bytes with confirms, window W
  consume  dimsebus Consumer (validate every event, ack) on a quorum queue
           vs a raw aio-pika consumer that only acks, on the same kind of queue
Rounds alternate between the two so that machine noise hits both alike.

    python -m bench.bus [--events 20000] [--rounds 3] [--window 256]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Awaitable, Iterator
from uuid import UUID

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from rich.console import Console
from rich.table import Table

from bench import machine
from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CONTENT_TYPE
from dimsebus.schemas.examples import move_story
from dimsebus.services.bus.codec import outgoing_event, to_message
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.consumer import Consumer
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.topology import (
    EVENTS_EXCHANGE,
    WorkQueue,
    declare_topology,
    declare_work_queue,
)
from dimsebus.services.clock import new_id, utc_now
from tests.broker import LOCAL_URL, local_rabbitmqctl, private_vhost


def cstore_events(count: int) -> list[ev.CStoreResponseReceived]:
    """``count`` distinct C-STORE response events, as the node would publish them."""
    ids: Iterator[UUID] = iter(new_id, None)
    found: list[ev.CStoreResponseReceived] = []
    while len(found) < count:
        story = move_story(node_id="bench", start=utc_now(), ids=ids, instances=50)
        found += [e for e in story if isinstance(e, ev.CStoreResponseReceived)]
    return found[:count]


async def publish_dimsebus(
    connection: AbstractRobustConnection, events: list[ev.CStoreResponseReceived], window: int
) -> float:
    publisher = Publisher(await confirming_channel(connection), window=window)
    started = time.perf_counter()
    await publisher.publish_all(events)
    return time.perf_counter() - started


async def publish_raw(
    connection: AbstractRobustConnection, events: list[ev.CStoreResponseReceived], window: int
) -> float:
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
    # The same body and properties as dimsebus sends, encoded before the clock starts.
    prepared = [(e.model_dump_json().encode(), e, e.routing_key) for e in events]
    gate = asyncio.Semaphore(window)

    async def one(body: bytes, event: ev.CStoreResponseReceived, key: str) -> None:
        async with gate:
            message = aio_pika.Message(
                body,
                content_type=CONTENT_TYPE,
                message_id=str(event.id),
                type=event.type,
                timestamp=event.time,
                correlation_id=str(event.data.operation.id),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await exchange.publish(message, key, mandatory=True)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for body, event, key in prepared:
            group.create_task(one(body, event, key))
    return time.perf_counter() - started


async def publish_batches(
    connection: AbstractRobustConnection, events: list[ev.CStoreResponseReceived], window: int
) -> float:
    """As the outbox relay publishes: batches of 4 windows, each in one write."""
    publisher = Publisher(await confirming_channel(connection), window=window)
    started = time.perf_counter()
    size = window * 4
    for start in range(0, len(events), size):
        outcomes = await publisher.send_batch(
            [outgoing_event(event) for event in events[start : start + size]]
        )
        assert all(isinstance(outcome, float) for outcome in outcomes), outcomes[:1]
    return time.perf_counter() - started


async def fill(
    connection: AbstractRobustConnection, queue: WorkQueue, events: list[ev.CStoreResponseReceived]
) -> None:
    channel = await confirming_channel(connection)
    work = await declare_work_queue(channel, queue)
    await work.purge()
    await Publisher(channel).publish_all(events)


async def consume_dimsebus(
    connection: AbstractRobustConnection, queue: WorkQueue, count: int, prefetch: int
) -> float:
    done = asyncio.Event()
    seen = 0

    async def handler(event: ev.Event) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    channel = await confirming_channel(connection)
    started = time.perf_counter()
    await Consumer(channel, queue, handler, prefetch=prefetch).start()
    await done.wait()
    elapsed = time.perf_counter() - started
    await channel.close()
    return elapsed


async def consume_raw(
    connection: AbstractRobustConnection, queue: WorkQueue, count: int, prefetch: int
) -> float:
    done = asyncio.Event()
    seen = 0

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal seen
        await message.ack()
        seen += 1
        if seen == count:
            done.set()

    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    work = await channel.get_queue(queue.name, ensure=False)
    started = time.perf_counter()
    await work.consume(on_message)
    await done.wait()
    elapsed = time.perf_counter() - started
    await channel.close()
    return elapsed


async def run(
    url: str, count: int, rounds: int, window: int, prefetch: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per path and round, and this process's CPU seconds per path and round."""
    events = cstore_events(count)
    publishers = {
        "raw publish": publish_raw,
        "dimsebus publish": publish_dimsebus,
        "dimsebus batch publish": publish_batches,
    }
    names = (*publishers, "raw consume", "dimsebus consume")
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    queue = WorkQueue("dimsebus.bench", bindings=("dicom.cstore.#",))
    connection = await connect(url, "dimsebus-bench")

    async def timed(name: str, run: Awaitable[float]) -> None:
        started = time.process_time()
        times[name].append(await run)
        cpu[name].append(time.process_time() - started)

    async with connection:
        await declare_topology(await connection.channel())
        for round_number in range(rounds):
            # alternate the order, so that drift in the machine hits every path alike
            order = list(publishers)[:: 1 if round_number % 2 else -1]
            for name in order:
                await timed(name, publishers[name](connection, events, window))
            await fill(connection, queue, events)
            await timed("raw consume", consume_raw(connection, queue, count, prefetch))
            await fill(connection, queue, events)
            await timed("dimsebus consume", consume_dimsebus(connection, queue, count, prefetch))
    return times, cpu


def show(
    times: dict[str, list[float]], cpu: dict[str, list[float]], count: int, size: int, window: int
) -> None:
    rounds = len(next(iter(times.values())))
    table = Table(
        title=f"bus: {count} events of {size} bytes, window {window}, median of {rounds} rounds"
    )
    for column in ("path", "events/s", "ratio to raw", "client CPU us/event"):
        table.add_column(column, justify="right" if column != "path" else "left")
    rate = {name: count / statistics.median(values) for name, values in times.items()}
    for name in times:
        base = rate["raw " + name.rsplit(" ", 1)[1]]
        per_event = statistics.median(cpu[name]) / count * 1e6
        table.add_row(name, f"{rate[name]:,.0f}", f"{rate[name] / base:.2f}", f"{per_event:.0f}")
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--prefetch", type=int, default=256)
    args = parser.parse_args()
    base_url = os.environ.get("AMQP_URL", LOCAL_URL)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(private_vhost(base_url, local_rabbitmqctl()))
        times, cpu = asyncio.run(run(url, args.events, args.rounds, args.window, args.prefetch))
    size = len(to_message(cstore_events(1)[0]).body)
    show(times, cpu, args.events, size, args.window)


if __name__ == "__main__":
    with machine.reported():
        main()
