"""The relay's own latency: an outbox commit until a consumer has the event, at R rows/s.

A thread appends C-STORE response events to an outbox at a steady rate, as the
DIMSE threads do (one commit each); the node's relay process publishes them with
confirms; a consumer of a transient queue bound to ``dimsebus.events`` notes when
each arrives. Latency = arrival - the end of the row's commit (one clock, one
process). The relay's CPU per event is its process's CPU over the run / rows.

The relay runs at the node's niceness (10) unless ``--niceness`` says otherwise: on a
loaded machine, 0 shows what the relay's design costs apart from its waits for a CPU.

  python -m bench.relay [--rate 200 --rate 1000] [--seconds 10] [--rounds 1] [--niceness N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from uuid import UUID

from aio_pika.abc import AbstractIncomingMessage
from rich.console import Console
from rich.table import Table

from bench import machine
from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story
from dimsebus.services.bus.connection import connect
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.bus.relay import NICENESS, RelayProcess
from dimsebus.services.bus.topology import EVENTS_EXCHANGE, declare_topology
from dimsebus.services.clock import new_id, utc_now
from tests.broker import LOCAL_URL, local_rabbitmqctl, private_vhost


def responses(count: int) -> list[CloudEvent]:
    """``count`` distinct C-STORE response events, made before the clock starts."""
    story = move_story(node_id="bench", start=utc_now(), ids=iter(new_id, None), instances=100)
    template = [e for e in story if isinstance(e, ev.CStoreResponseReceived)]
    made: list[CloudEvent] = []
    for number in range(count):
        event = template[number % len(template)]
        data = event.data.model_copy(update={"affected_sop_instance_uid": f"1.2.3.{number}"})
        made.append(event.model_copy(update={"id": new_id(), "data": data}))
    return made


def append_steadily(
    outbox: Outbox, events: list[CloudEvent], rate: float, committed: dict[UUID, float]
) -> None:
    """Append ``events`` one commit each at ``rate`` per second; note each commit's end."""
    started = time.perf_counter()
    for number, event in enumerate(events):
        outbox.append([event])
        committed[event.id] = time.perf_counter()
        time.sleep(max(0.0, started + (number + 1) / rate - time.perf_counter()))


async def measure(
    url: str, rate: float, seconds: float, folder: Path, niceness: int
) -> tuple[list[float], float]:
    """Latencies (s) of ``rate * seconds`` rows, and the relay's CPU seconds per row."""
    events = responses(int(rate * seconds))
    arrived: dict[str, float] = {}
    started, done = asyncio.Event(), asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        arrived[str(message.message_id)] = time.perf_counter()
        started.set()
        if len(arrived) >= len(events) + 1:
            done.set()

    async with await connect(url, "dimsebus-bench-relay-consumer") as connection:
        channel = await connection.channel()
        await declare_topology(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(EVENTS_EXCHANGE, "#")
        await queue.consume(on_message, no_ack=True)
        outbox = Outbox(folder / "outbox.sqlite", dicom_path=True)
        relay = RelayProcess(
            folder / "outbox.sqlite", url, name="dimsebus-bench-relay", niceness=niceness
        )
        try:
            outbox.append(responses(1))  # the relay has started and published once
            await asyncio.wait_for(started.wait(), 120)
            committed: dict[UUID, float] = {}
            cpu = relay.cpu_seconds()
            writer = threading.Thread(
                target=append_steadily, args=(outbox, events, rate, committed)
            )
            writer.start()
            await asyncio.to_thread(writer.join)
            await asyncio.wait_for(done.wait(), 120)
            cpu_per_row = (relay.cpu_seconds() - cpu) / len(events)
        finally:
            relay.stop()
            outbox.close()
    return [arrived[str(key)] - at for key, at in committed.items()], cpu_per_row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, action="append")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--niceness", type=int, default=NICENESS)
    args = parser.parse_args()
    rates = args.rate or [200.0, 1000.0]
    base = os.environ.get("AMQP_URL", LOCAL_URL)
    table = Table(title="relay: outbox commit -> consumer")
    for column in ("rows/s", "p50 ms", "p99 ms", "max ms", "relay CPU us/row"):
        table.add_column(column, justify="right")
    for _ in range(args.rounds):
        for rate in rates:
            with (
                tempfile.TemporaryDirectory() as folder,
                private_vhost(base, local_rabbitmqctl()) as url,
            ):
                latencies, cpu = asyncio.run(
                    measure(url, rate, args.seconds, Path(folder), args.niceness)
                )
            cuts = statistics.quantiles(latencies, n=100)
            table.add_row(
                f"{rate:.0f}",
                f"{cuts[49] * 1000:.1f}",
                f"{cuts[98] * 1000:.1f}",
                f"{max(latencies) * 1000:.1f}",
                f"{cpu * 1e6:.0f}",
            )
    Console().print(table)


if __name__ == "__main__":
    with machine.reported():
        main()
