"""The bus's limits against a real RabbitMQ: oversized and forged messages are parked or skipped."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from uuid import UUID

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import every_event
from dimsebus.schemas.limits import MAX_BODY_BYTES
from dimsebus.services.bus.connection import confirming_channel
from dimsebus.services.bus.consumer import REASON_HEADER, Consumer
from dimsebus.services.bus.log import LogEntry, LogReader
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.topology import EVENTS_EXCHANGE, WorkQueue
from dimsebus.services.clock import new_id, utc_now
from dimsebus.services.tracker.app import Tracker, TrackerSettings
from dimsebus.services.tracker.store import open_store
from tests.integration.conftest import until

pytestmark = pytest.mark.integration

RELEASED = "dicom.association.released"


def fresh() -> dict[str, CloudEvent]:
    """One event of every type, with new ids, by type."""
    ids = iter(new_id, None)
    return {e.type: e for e in every_event(node_id="limits", start=utc_now(), ids=ids)}


def oversized() -> aio_pika.Message:
    """A body one byte over the limit: valid JSON that nobody should parse."""
    padding = MAX_BODY_BYTES - len(b'{"padding": ""}') + 1
    return aio_pika.Message(b'{"padding": "' + b"x" * padding + b'"}', message_id="oversized")


def forged(event: CloudEvent) -> aio_pika.Message:
    """``event``'s body, to be published under a routing key that is not its own."""
    return aio_pika.Message(event.model_dump_json().encode(), message_id=f"forged {event.id}")


async def parked(channel: AbstractChannel, name: str, count: int) -> list[AbstractIncomingMessage]:
    """The first ``count`` messages of a parking queue, as soon as they are there."""
    queue = await channel.get_queue(name, ensure=False)
    found: list[AbstractIncomingMessage] = []
    async with asyncio.timeout(20):
        while len(found) < count:  # polling a queue: no event says it filled
            if (message := await queue.get(fail=False)) is None:
                await asyncio.sleep(0.05)
                continue
            await message.ack()
            found.append(message)
    return found


async def test_oversized_and_forged_messages_are_parked_and_consuming_goes_on(
    connection: AbstractRobustConnection, channel: AbstractChannel
) -> None:
    # given a consumer of association events
    queue = WorkQueue("dimsebus.test.limits", bindings=("dicom.association.#",))
    handled: list[ev.Event] = []

    async def record(event: ev.Event) -> None:
        handled.append(event)

    await Consumer(await confirming_channel(connection), queue, record).start()
    events = fresh()
    finished, released = events["dimsebus.move.finished"], events[RELEASED]
    exchange = await channel.get_exchange(EVENTS_EXCHANGE)
    # when a body over the limit, then a tracker's event under a node's key, then a valid
    # event arrive
    await exchange.publish(oversized(), RELEASED)
    await exchange.publish(forged(finished), RELEASED)
    await Publisher(channel).publish(released)
    # then the valid one is handled, and only it
    await until(lambda: len(handled) == 1, within=20)
    assert handled == [released]
    # and the two others are parked, each with why
    reasons = {
        str(m.message_id): str((m.headers or {})[REASON_HEADER])
        for m in await parked(channel, queue.parking, 2)
    }
    assert reasons["oversized"] == (
        f"body: {MAX_BODY_BYTES + 1} bytes is over the limit of {MAX_BODY_BYTES} (max_body_bytes)"
    )
    assert reasons[f"forged {finished.id}"] == (
        f"routing key '{RELEASED}' is not the event's own, 'dimsebus.move.finished' "
        "(type 'dimsebus.move.finished')"
    )


async def test_a_consumer_with_a_lower_limit_parks_what_is_over_it(
    connection: AbstractRobustConnection, channel: AbstractChannel
) -> None:
    # given a consumer whose max_body_bytes is smaller than an event
    queue = WorkQueue("dimsebus.test.lower-limit", bindings=(RELEASED,))
    handled: list[ev.Event] = []

    async def record(event: ev.Event) -> None:
        handled.append(event)

    await Consumer(await confirming_channel(connection), queue, record, max_body_bytes=100).start()
    event = fresh()[RELEASED]
    # when the event arrives
    await Publisher(channel).publish(event)
    # then it is parked by its size, unhandled
    [message] = await parked(channel, queue.parking, 1)
    assert message.message_id == str(event.id)
    assert "is over the limit of 100" in str((message.headers or {})[REASON_HEADER])
    assert handled == []


async def read_until(reader: LogReader, event_id: UUID) -> list[LogEntry]:
    """Entries up to and with the event ``event_id``."""
    entries: list[LogEntry] = []
    async for entry in reader:
        entries.append(entry)
        if entry.event is not None and entry.event.id == event_id:
            return entries
    return entries


async def test_the_tracker_skips_oversized_and_forged_log_records_naming_their_offsets(
    connection: AbstractRobustConnection,
    channel: AbstractChannel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a reader of the log from what comes next
    events = fresh()
    move = [e for e in events.values() if e.type.startswith("dicom.move.")]
    exchange = await channel.get_exchange(EVENTS_EXCHANGE)
    async with LogReader(await connection.channel(), "next") as reader:
        # when an oversized record, a forged one and a move's events are published
        await exchange.publish(oversized(), "dicom.cstore.response.received.success")
        await exchange.publish(forged(events["dimsebus.move.finished"]), "dicom.move.completed")
        await Publisher(channel).publish_all(move)
        entries = await asyncio.wait_for(read_until(reader, move[-1].id), 30)
    # then the reader gives the two records as errors, at their offsets, and goes on
    bad = [entry for entry in entries if entry.event is None]
    assert [entry.routing_key for entry in bad][:2] == [
        "dicom.cstore.response.received.success",
        "dicom.move.completed",
    ]
    assert "is over the limit" in str(bad[0].error)
    assert "is not the event's own" in str(bad[1].error)
    # and the tracker folds the rest, with one warning line naming each skipped offset
    settings = TrackerSettings(db=str(tmp_path / "t.sqlite"), outbox_path=tmp_path / "o.sqlite")
    tracker = Tracker(settings, open_store(settings.db), Outbox(settings.outbox_path))
    with caplog.at_level(logging.WARNING, logger="dimsebus.services.tracker.app"):
        tracker.handle(entries, utc_now() + dt.timedelta(seconds=1))
    skipped = [r.getMessage() for r in caplog.records if "skipping log entry" in r.getMessage()]
    assert skipped[:2] == [
        f"skipping log entry {bad[0].offset} (dicom.cstore.response.received.success): "
        f"{bad[0].error}",
        f"skipping log entry {bad[1].offset} (dicom.move.completed): {bad[1].error}",
    ]
    assert tracker.applied == len(entries)
