"""Where a replay's CPU goes: the tracker's stages measured alone, against the real broker.

read      the log read in the tracker's batches, bodies not validated: over the
          stream protocol (chunks, the routing key and body of each AMQP 1.0
          record, credit), as the tracker reads it, and over AMQP 0-9-1 (aiormq's
          frames, the reader's queue and acks), the fallback
validate  every body decoded and validated as the reader does (decode_body)
fold      the decoded entries folded and stored in batches of 500, as the
          tracker does (Tracker.handle, SQLite); each batch is decoded, folded
          and let go, as in the tracker
replay    the whole of bench.tracker's replay (over the stream protocol), for
          comparison: the sum of the stages (reading over the stream protocol) plus
          what running them together costs (the fold's thread and
          the reader's loop taking turns, the tracker's HTTP side). Garbage
          collection falls in each row: with it disabled (an experiment, not
          a setting), a whole replay measured 8-20 us/event less

CPU is this process's (time.process_time) per event; "at most" is what one core
spending only that would fold per second.

The log is written --log-batch events a publish (default 4, about a node's relay's
batch at full C-STORE speed; see bench.tracker).

  python -m bench.tracker_split [--events 100000] [--log-batch 4]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
from pathlib import Path

from aiormq.abc import DeliveredMessage
from rich.console import Console
from rich.table import Table

from bench import machine
from bench.tracker import publish_moves, replay
from dimsebus.services.bus.codec import decode_body
from dimsebus.services.bus.connection import connect
from dimsebus.services.bus.log import LogEntry, LogReader, StreamLogReader
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.bus.stream_client import StreamAddress
from dimsebus.services.bus.stream_wire import amqp_message
from dimsebus.services.clock import utc_now
from dimsebus.services.tracker.app import Tracker, TrackerSettings, collect_less_often
from dimsebus.services.tracker.store import open_store
from tests.broker import LOCAL_URL, local_rabbitmqctl, private_vhost

BATCH = 500


class UndecodedReader(LogReader):
    """The tracker's reader, keeping each body and routing key instead of decoding it."""

    bodies: list[tuple[bytes, str]]

    def _entry(self, message: DeliveredMessage) -> LogEntry:
        self.bodies.append((message.body, message.routing_key or ""))
        return LogEntry(len(self.bodies) - 1, message.routing_key or "", None)


class UndecodedStreamReader(StreamLogReader):
    """The tracker's stream reader, keeping each record's body and routing key."""

    bodies: list[tuple[bytes, str]]

    def _entry(self, item: tuple[int, bytes]) -> LogEntry:
        key, body = amqp_message(item[1])
        self.bodies.append((body, key or ""))
        return LogEntry(item[0], key or "", None)


Read = tuple[list[tuple[bytes, str]], float, float]  # bodies and keys, CPU and wall seconds


async def read_stream(url: str, count: int) -> Read:
    """Every body on the log, read over the stream protocol, and the CPU and wall seconds
    it took."""
    reader = UndecodedStreamReader(StreamAddress.of(url), "first")
    reader.bodies = []
    return reader.bodies, *await time_to_read(reader, count)


async def read(url: str, count: int) -> Read:
    """Every body on the log, read over AMQP, and the CPU and wall seconds it took."""
    async with await connect(url, "dimsebus-bench-split") as connection:
        reader = UndecodedReader(await connection.channel(), "first", prefetch=2000)
        reader.bodies = []
        return reader.bodies, *await time_to_read(reader, count)


async def time_to_read(reader: LogReader | StreamLogReader, count: int) -> tuple[float, float]:
    """The CPU and wall seconds ``reader`` takes to give ``count`` entries in the tracker's
    batches. Alone, a reader takes entries as fast as the broker sends them: its CPU
    includes looking for more, which a replay, whose fold lets them gather, does not pay."""
    async with reader:
        cpu, wall, taken = time.process_time(), time.perf_counter(), 0
        while taken < count:
            taken += len(await reader.batch(BATCH, 5.0))
        return time.process_time() - cpu, time.perf_counter() - wall


def validate_and_fold(bodies: list[tuple[bytes, str]], folder: Path) -> tuple[float, float]:
    """CPU seconds to decode the bodies, and to fold and store them, batch by batch as the
    tracker does (each batch decoded, folded and let go)."""
    settings = TrackerSettings(
        amqp_url=LOCAL_URL, db=str(folder / "split.sqlite"), outbox_path=folder / "o.sqlite"
    )
    tracker = Tracker(settings, open_store(settings.db), Outbox(settings.outbox_path))
    validating = folding = 0.0
    for at in range(0, len(bodies), BATCH):
        started = time.process_time()
        entries = [
            LogEntry(at + n, key, decode_body(body, key))
            for n, (body, key) in enumerate(bodies[at : at + BATCH])
        ]
        decoded = time.process_time()
        tracker.handle(entries, utc_now())
        validating, folding = (
            validating + decoded - started,
            folding + time.process_time() - decoded,
        )
    return validating, folding


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--log-batch", type=int, default=4, help="events a publish")
    args = parser.parse_args()
    base = os.environ.get("AMQP_URL", LOCAL_URL)
    collect_less_often()  # as `dimsebus tracker` does
    with tempfile.TemporaryDirectory() as folder, private_vhost(base, local_rabbitmqctl()) as url:
        count = asyncio.run(publish_moves(url, args.events, args.log_batch))
        gc.collect()
        _, reading_amqp, wall_amqp = asyncio.run(read(url, count))
        gc.collect()
        bodies, reading, wall = asyncio.run(read_stream(url, count))
        validating, folding = validate_and_fold(bodies, Path(folder))
        del bodies
        gc.collect()
        elapsed, whole = asyncio.run(replay(url, count, Path(folder)))
    table = Table(
        title=f"replay split: {count:,} events, {args.log_batch} a publish "
        f"(load {os.getloadavg()[0]:.2f})"
    )
    for column in ("stage", "CPU us/event", "at most events/s", "wall clock events/s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    stages = {"read (stream protocol)": reading, "validate": validating, "fold + store": folding}
    walls = {
        "read (stream protocol)": wall,
        "read over AMQP 0-9-1 instead (the fallback)": wall_amqp,
    }
    stages["sum of the stages"] = sum(stages.values())
    stages["read over AMQP 0-9-1 instead (the fallback)"] = reading_amqp
    for name, seconds in stages.items():
        rate = f"{count / walls[name]:,.0f}" if name in walls else ""
        table.add_row(name, f"{seconds / count * 1e6:.1f}", f"{count / seconds:,.0f}", rate)
    table.add_row(
        "replay, whole",
        f"{whole / count * 1e6:.1f}",
        f"{count / whole:,.0f}",
        f"{count / elapsed:,.0f}",
    )
    Console().print(table)


if __name__ == "__main__":
    with machine.reported():
        main()
