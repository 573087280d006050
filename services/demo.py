"""The interim demo: a C-MOVE's worth of real events through the broker and back.

It publishes the example story (``schemas.examples``) with confirms to
``dimsebus.events``, reads every event back from the ``dimsebus.log`` stream,
validates it, and shows what arrived. The node (issue #3) replaces the
example story with events captured from real associations.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from uuid import UUID

from aio_pika.abc import AbstractRobustConnection

from schemas.envelope import CloudEvent
from schemas.events import COMMAND_MODELS
from schemas.examples import move_story
from services.bus.connection import confirming_channel, connect
from services.bus.log import LogEntry, LogReader
from services.bus.publisher import Publisher
from services.bus.topology import declare_topology
from services.clock import new_id, utc_now
from services.settings import ServiceSettings

_ID_STREAM_LENGTH = 1_000_000


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo published and what it read back from the log."""

    published: list[CloudEvent]
    read_back: list[LogEntry]
    publish_seconds: float

    @property
    def all_returned_equal(self) -> bool:
        """Every published event came back from the log as an equal model."""
        returned = {entry.event.id: entry.event for entry in self.read_back if entry.event}
        return all(returned.get(event.id) == event for event in self.published)


async def run_demo(
    settings: ServiceSettings, instances: int = 20, read_timeout: float = 30.0
) -> DemoResult:
    """Publish one example move's events and read them back from the stream."""
    connection = await connect(settings.amqp_url, "dimsebus-demo")
    async with connection:
        return await _publish_and_read(connection, settings, instances, read_timeout)


async def _publish_and_read(
    connection: AbstractRobustConnection,
    settings: ServiceSettings,
    instances: int,
    read_timeout: float,
) -> DemoResult:
    channel = await confirming_channel(connection)
    await declare_topology(channel, settings.retention)
    ids = (new_id() for _ in range(_ID_STREAM_LENGTH))
    story = move_story(node_id="demo", start=utc_now(), ids=ids, instances=instances)
    events = [event for event in story if not isinstance(event, COMMAND_MODELS)]
    wanted = {event.id for event in events}
    async with LogReader(await connection.channel(), "next") as log:
        started = time.perf_counter()
        await Publisher(channel, window=settings.publish_window).publish_all(events)
        elapsed = time.perf_counter() - started
        read_back = await asyncio.wait_for(_collect(log, wanted), read_timeout)
    return DemoResult(events, read_back, elapsed)


async def _collect(log: LogReader, wanted: set[UUID]) -> list[LogEntry]:
    entries = []
    async for entry in log:
        if entry.event is not None and entry.event.id in wanted:
            entries.append(entry)
            wanted.discard(entry.event.id)
            if not wanted:
                break
    return entries
