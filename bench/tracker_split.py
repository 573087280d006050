"""Where a replay's CPU goes: the tracker's stages measured alone, against the real broker.

read      the log read in the tracker's batches, bodies not decoded (aiormq's
          frames, the reader's queue and credit)
validate  every body decoded and validated as the reader does (decode_body)
fold      the decoded entries folded and stored in batches of 500, as the
          tracker does (Tracker.handle, SQLite); each batch is decoded, folded
          and let go, as in the tracker
replay    the whole of bench.tracker's replay, for comparison: the sum of the
          stages plus what running them together costs (the fold's thread and
          the reader's loop taking turns, the tracker's HTTP side). Garbage
          collection falls in each row: with it disabled (an experiment, not
          a setting), a whole replay measured 8-20 us/event less

CPU is this process's (time.process_time) per event; "at most" is what one core
spending only that would fold per second.

  python -m bench.tracker_split [--events 100000]
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

from bench.tracker import publish_moves, replay
from dimsebus.services.bus.codec import decode_body
from dimsebus.services.bus.connection import connect
from dimsebus.services.bus.log import LogEntry, LogReader
from dimsebus.services.bus.outbox import Outbox
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


async def read(url: str, count: int) -> tuple[list[tuple[bytes, str]], float]:
    """Every body on the log, and the CPU seconds reading them took."""
    async with await connect(url, "dimsebus-bench-split") as connection:
        reader = UndecodedReader(await connection.channel(), "first", prefetch=2000)
        reader.bodies = []
        async with reader:
            started, taken = time.process_time(), 0
            while taken < count:
                taken += len(await reader.batch(BATCH, 5.0))
            return reader.bodies, time.process_time() - started


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
    args = parser.parse_args()
    base = os.environ.get("AMQP_URL", LOCAL_URL)
    collect_less_often()  # as `dimsebus tracker` does
    with tempfile.TemporaryDirectory() as folder, private_vhost(base, local_rabbitmqctl()) as url:
        count = asyncio.run(publish_moves(url, args.events))
        gc.collect()
        bodies, reading = asyncio.run(read(url, count))
        validating, folding = validate_and_fold(bodies, Path(folder))
        del bodies
        gc.collect()
    with tempfile.TemporaryDirectory() as folder, private_vhost(base, local_rabbitmqctl()) as url:
        replayed = asyncio.run(publish_moves(url, args.events))
        elapsed, whole = asyncio.run(replay(url, replayed, Path(folder)))
    table = Table(title=f"replay split: {count:,} events (load {os.getloadavg()[0]:.2f})")
    for column in ("stage", "CPU us/event", "at most events/s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    stages = {"read": reading, "validate": validating, "fold + store": folding}
    stages["sum of the stages"] = sum(stages.values())
    for name, seconds in stages.items():
        table.add_row(name, f"{seconds / count * 1e6:.1f}", f"{count / seconds:,.0f}")
    table.add_row("replay, whole", f"{whole / replayed * 1e6:.1f}", f"{replayed / whole:,.0f}")
    table.add_row("replay, whole (wall clock)", "", f"{replayed / elapsed:,.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
