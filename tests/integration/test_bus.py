"""The bus against a real RabbitMQ: topology, confirmed publishing, the log, parking."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CONTENT_TYPE, CloudEvent
from dimsebus.schemas.examples import every_event, move_story
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.consumer import REASON_HEADER, Consumer
from dimsebus.services.bus.log import LogEntry, LogReader
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.topology import (
    EVENTS_EXCHANGE,
    LOG_STREAM,
    StreamRetention,
    WorkQueue,
    declare_topology,
)
from dimsebus.services.clock import new_id, utc_now
from dimsebus.services.errors import TopologyError, Unprocessable, UnroutableEvent
from tests.broker import Broker
from tests.integration.conftest import until

pytestmark = pytest.mark.integration


def fresh_ids() -> Iterator[UUID]:
    while True:
        yield new_id()


def story(instances: int = 5) -> list[CloudEvent]:
    events = move_story(node_id="test", start=utc_now(), ids=fresh_ids(), instances=instances)
    return [event for event in events if not isinstance(event, ev.COMMAND_MODELS)]


async def read_ids(channel: AbstractChannel, wanted: set[UUID]) -> dict[UUID, LogEntry]:
    found: dict[UUID, LogEntry] = {}
    async with LogReader(channel, "first") as log:
        async for entry in log:
            if entry.event is not None and entry.event.id in wanted:
                found.setdefault(entry.event.id, entry)
                if len(found) == len(wanted):
                    return found
    return found


async def test_every_event_type_round_trips_through_the_log(
    connection: AbstractRobustConnection, channel: AbstractChannel
) -> None:
    # given one event of every type in the contract
    everything = every_event(node_id="test", start=utc_now(), ids=fresh_ids())
    events = [event for event in everything if not isinstance(event, ev.COMMAND_MODELS)]
    assert {event.type for event in events} == {
        m.model_fields["type"].default for m in ev.EVENT_MODELS
    }
    # when they are published with confirms
    await Publisher(channel).publish_all(events)
    # then the stream, read from `first`, holds each as an equal model under its routing key
    found = await asyncio.wait_for(read_ids(await connection.channel(), {e.id for e in events}), 30)
    for event in events:
        entry = found[event.id]
        assert entry.event == event
        assert type(entry.event) is type(event)
        assert entry.routing_key == event.routing_key


async def test_amqp_properties_mirror_the_envelope(
    connection: AbstractRobustConnection, channel: AbstractChannel
) -> None:
    # given a C-STORE response event, published
    event = next(e for e in story() if isinstance(e, ev.CStoreResponseReceived))
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(EVENTS_EXCHANGE, "dicom.cstore.response.received.*")
    await Publisher(channel).publish(event)
    # when it is fetched from a queue bound by routing key
    message = await _get(queue)
    # then its properties say what the envelope says
    assert message.routing_key == f"dicom.cstore.response.received.{event.data.status_category}"
    assert message.message_id == str(event.id)
    assert message.type == event.type
    assert message.correlation_id == str(event.data.operation.id)
    assert message.content_type == CONTENT_TYPE
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None
    assert abs(message.timestamp.replace(tzinfo=dt.UTC) - event.time) < dt.timedelta(seconds=1)
    assert json.loads(message.body)["specversion"] == "1.0"


async def _get(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    for _ in range(100):
        message = await queue.get(fail=False, no_ack=True)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing arrived on {queue.name}")


async def test_topology_declaration_is_idempotent_and_guards_its_arguments(
    channel: AbstractChannel,
) -> None:
    # declaring again with the same retention changes nothing
    await declare_topology(channel)
    # a different retention on the existing stream is a clear error, not a silent change
    with pytest.raises(TopologyError, match=r"dimsebus\.log.*policy"):
        await declare_topology(channel, StreamRetention(max_age="1h"))


async def test_unroutable_publish_is_an_error(
    channel: AbstractChannel,
) -> None:
    # given an exchange that nothing is bound to
    await channel.declare_exchange(
        "dimsebus.test.nowhere", aio_pika.ExchangeType.TOPIC, auto_delete=True
    )
    # when an event is published there, then the broker's return surfaces as an error
    with pytest.raises(UnroutableEvent, match=r"reaches no queue"):
        await Publisher(channel).publish(story()[0], exchange="dimsebus.test.nowhere")


async def test_window_publishes_many_concurrently(
    connection: AbstractRobustConnection, channel: AbstractChannel
) -> None:
    # given 2000 events and a window of 64 unconfirmed publishes
    events = [event for _ in range(100) for event in story(instances=3)][:2000]
    publisher = Publisher(channel, window=64)
    # when they are published at once
    await publisher.publish_all(events)
    # then every one is on the log
    found = await asyncio.wait_for(read_ids(await connection.channel(), {e.id for e in events}), 60)
    assert len(found) == len(events)


class Recorder:
    """A handler that records events, and can refuse some."""

    def __init__(self, refuse: set[UUID] | None = None) -> None:
        self.events: list[ev.Event] = []
        self.refuse = refuse or set()

    async def __call__(self, event: ev.Event) -> None:
        if event.id in self.refuse:
            raise Unprocessable(f"event {event.id} is not for this consumer")
        self.events.append(event)


async def _drain(
    channel: AbstractChannel, name: str, count: int
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    queue = await channel.get_queue(name, ensure=False)
    messages: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with asyncio.timeout(20):
        while len(messages) < count:
            message = await queue.get(fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            await message.ack()
            messages.append(message)
    return messages


async def test_invalid_messages_are_parked_with_the_reason_and_consuming_goes_on(
    connection: AbstractRobustConnection, channel: AbstractChannel
) -> None:
    # given a consumer on its own work queue
    queue = WorkQueue("dimsebus.test.parking", bindings=("dicom.association.#",))
    good = [e for e in story() if e.type.startswith("dicom.association.")]
    refused = good[1]
    recorder = Recorder(refuse={refused.id})
    consumer_channel = await confirming_channel(connection)
    await Consumer(consumer_channel, queue, recorder).start()
    publisher = Publisher(channel)
    raw = await channel.get_exchange(EVENTS_EXCHANGE)
    # when valid events, a non-JSON body and an event with a bad UID are published
    await publisher.publish(good[0])
    await raw.publish(aio_pika.Message(b"{not json"), "dicom.association.released")
    bad_uid = json.loads(good[2].model_dump_json())
    bad_uid["data"]["association"]["peer_ae_title"] = "BAD\\AE"
    await raw.publish(aio_pika.Message(json.dumps(bad_uid).encode()), "dicom.association.released")
    await publisher.publish_all(good[1:])
    # then the valid ones are handled, in spite of the bad ones between them
    await until(lambda: len(recorder.events) == len(good) - 1, within=20.0)
    assert [e.id for e in recorder.events] == [e.id for e in good if e is not refused]
    # and the three others are parked with the reason in a header
    parked = await _drain(channel, queue.parking, 3)
    reasons = sorted(str((m.headers or {})[REASON_HEADER]) for m in parked)
    assert any("Invalid JSON" in reason for reason in reasons)
    assert any("peer_ae_title" in reason and "BAD" in reason for reason in reasons)
    assert any(str(refused.id) in reason for reason in reasons)
    assert all((m.headers or {})["x-original-queue"] == queue.name for m in parked)


async def test_a_handler_that_keeps_failing_is_dead_lettered_by_the_delivery_limit(
    connection: AbstractRobustConnection, channel: AbstractChannel
) -> None:
    # given a consumer whose handler always fails, on a queue with a delivery limit of 2
    queue = WorkQueue(
        "dimsebus.test.poison", bindings=("dicom.association.released",), delivery_limit=2
    )
    attempts: list[UUID] = []

    async def broken(event: ev.Event) -> None:
        attempts.append(event.id)
        raise RuntimeError("database is down")

    await Consumer(await confirming_channel(connection), queue, broken).start()
    event = next(e for e in story() if isinstance(e, ev.AssociationReleased))
    # when an event arrives
    await Publisher(channel).publish(event)
    # then it is retried, then parked by the broker instead of looping forever
    parked = await _drain(channel, queue.parking, 1)
    assert parked[0].message_id == str(event.id)
    assert len(attempts) == 3


async def test_publisher_survives_a_closed_connection(broker: Broker) -> None:
    # given a publisher on its own named connection
    connection = await connect(broker.url, "dimsebus-test-publisher")
    async with connection:
        channel = await confirming_channel(connection)
        publisher = Publisher(channel, window=32)
        events = [e for _ in range(40) for e in story(instances=3)]
        half = len(events) // 2
        await publisher.publish_all(events[:half])
        # when the broker closes its connection mid-stream
        assert broker.close_connections("dimsebus-test-publisher") == 1
        await publisher.publish_all(events[half:])
        # then every event still reaches the log (at least once; consumers dedupe by id)
        reader = await connect(broker.url, "dimsebus-test-reader")
        async with reader:
            found = await asyncio.wait_for(
                read_ids(await reader.channel(), {e.id for e in events}), 60
            )
    assert len(found) == len(events)
    assert LOG_STREAM == "dimsebus.log"


async def test_events_tail_filters_by_type(channel: AbstractChannel, amqp_url: str) -> None:
    # given the example story published to the log
    events = story()
    await Publisher(channel).publish_all(events)
    moves = [e for e in events if e.type.startswith("dicom.move.")]
    # when `events tail --type 'dicom.move.*'` reads the log from the start
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "dimsebus.services", "events", "tail", "--from", "first", "--json"),
        *("--type", "dicom.move.*", "--amqp-url", amqp_url),
        stdout=asyncio.subprocess.PIPE,
    )
    found: list[dict[str, Any]] = []
    assert process.stdout is not None
    async with asyncio.timeout(30):
        while not {str(e.id) for e in moves} <= {f["id"] for f in found}:
            found.append(json.loads(await process.stdout.readline()))
    process.terminate()
    await process.wait()
    # then only move events are printed (the log holds other tests' moves too)
    printed = {f["type"] for f in found}
    assert {"dicom.move.requested", "dicom.move.completed"} <= printed
    assert all(t.startswith("dicom.move.") for t in printed), printed
