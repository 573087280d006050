"""publish_batch against a real RabbitMQ: it writes with aiormq's channel internals,
so every way a confirm can end is checked here (see services/bus/batch.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from yarl import URL

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story
from dimsebus.services.bus.batch import publish_batch
from dimsebus.services.bus.codec import outgoing_event, to_message
from dimsebus.services.bus.connection import confirming_channel
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.topology import EVENTS_EXCHANGE, declare_topology
from dimsebus.services.clock import new_id, utc_now
from dimsebus.services.errors import EventNacked, PublishInterrupted, UnroutableEvent
from tests.integration.conftest import until
from tests.integration.test_bus import read_ids

pytestmark = pytest.mark.integration


def responses(count: int) -> list[CloudEvent]:
    found: list[CloudEvent] = []
    while len(found) < count:
        story = move_story(node_id="test", start=utc_now(), ids=iter(new_id, None), instances=50)
        found += [e for e in story if isinstance(e, ev.CStoreResponseReceived)]
    return found[:count]


async def underlay(channel: AbstractChannel) -> aiormq.Channel:
    found = await channel.get_underlay_channel()
    assert isinstance(found, aiormq.Channel)
    return found


async def test_a_batch_is_confirmed_message_by_message_and_reaches_the_log(
    channel: AbstractChannel,
) -> None:
    events = responses(300)
    outcomes = await publish_batch(
        await underlay(channel), EVENTS_EXCHANGE, [outgoing_event(e) for e in events], 30
    )
    assert all(isinstance(outcome, float) and outcome >= 0 for outcome in outcomes)
    found = await asyncio.wait_for(read_ids(channel, {e.id for e in events}), 30)
    assert [found[e.id].event for e in events] == events
    assert not (await underlay(channel)).message_id_delivery_tag  # nothing left behind


async def test_its_messages_carry_the_properties_a_single_publish_does(
    channel: AbstractChannel,
) -> None:
    event = responses(1)[0]
    assert outgoing_event(event).properties == to_message(event).properties
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(EVENTS_EXCHANGE, "dicom.cstore.response.#")
    await Publisher(channel).publish(event)
    await publish_batch(await underlay(channel), EVENTS_EXCHANGE, [outgoing_event(event)], 30)
    single, batched = [await queue.get(timeout=5, no_ack=True) for _ in range(2)]
    assert (batched.body, batched.routing_key) == (single.body, single.routing_key)
    assert batched.properties == single.properties


async def test_returned_and_nacked_messages_are_told_apart_from_confirmed_ones(
    channel: AbstractChannel,
) -> None:
    # given an exchange where "kept.*" reaches a queue, "full.*" a queue that rejects
    # every publish (max length 0, reject-publish), and anything else no queue at all
    exchange = await channel.declare_exchange(
        "dimsebus.test.batch", aio_pika.ExchangeType.TOPIC, auto_delete=True
    )
    kept = await channel.declare_queue(exclusive=True)
    await kept.bind(exchange, "kept.*")
    full = await channel.declare_queue(
        exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await full.bind(exchange, "full.*")
    keys = ["kept.a", "lost.b", "full.c", "kept.d"]
    messages = [
        dataclasses.replace(outgoing_event(event), routing_key=key)
        for event, key in zip(responses(len(keys)), keys, strict=True)
    ]
    # when they are published as one batch
    outcomes = await publish_batch(await underlay(channel), exchange.name, messages, 30)
    # then each has its own outcome, named
    assert isinstance(outcomes[0], float)
    assert isinstance(outcomes[1], UnroutableEvent)
    assert "lost.b" in str(outcomes[1])
    assert isinstance(outcomes[2], EventNacked)
    assert isinstance(outcomes[3], float)
    # and the channel goes on confirming the right messages
    again = await publish_batch(await underlay(channel), exchange.name, messages[:1], 30)
    assert isinstance(again[0], float)
    assert (await kept.declare()).message_count == 3


async def test_confirms_that_come_too_late_are_ambiguous_and_later_batches_stay_in_step(
    channel: AbstractChannel,
) -> None:
    events = responses(200)
    late = await publish_batch(
        await underlay(channel), EVENTS_EXCHANGE, [outgoing_event(e) for e in events[:100]], 1e-6
    )
    assert all(isinstance(outcome, PublishInterrupted) for outcome in late)
    assert "no confirm came within" in str(late[0])
    # the late acks are ignored; the next batch's delivery tags are still the broker's
    on_time = await publish_batch(
        await underlay(channel), EVENTS_EXCHANGE, [outgoing_event(e) for e in events[100:]], 30
    )
    assert all(isinstance(outcome, float) for outcome in on_time)


class Proxy:
    """A TCP proxy to the broker that can hold back what the broker sends, then cut."""

    def __init__(self, upstream: URL) -> None:
        self.upstream = upstream
        self.holding = False
        self.sockets: list[asyncio.StreamWriter] = []

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[URL]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            yield self.upstream.with_host("127.0.0.1").with_port(port)
            self.cut()

    def cut(self) -> None:
        for writer in self.sockets:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            self.upstream.host, self.upstream.port or 5672
        )
        self.sockets += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer, hold=False),
            self._pipe(up_reader, writer, hold=True),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool
    ) -> None:
        while data := await reader.read(65536):
            if not (hold and self.holding):
                writer.write(data)
                await writer.drain()


async def test_a_batch_cut_off_by_a_lost_connection_is_ambiguous_and_was_stored(
    amqp_url: str, connection: AbstractRobustConnection
) -> None:
    # given a confirming channel through a proxy that swallows the broker's confirms
    proxy = Proxy(URL(amqp_url))
    events = responses(100)
    async with proxy.serving() as url, await aio_pika.connect(url) as cut_off:
        channel = await confirming_channel(cut_off)
        await declare_topology(channel)
        proxy.holding = True
        # when the connection is lost before any confirm arrives (every publish issued)
        underlying = await underlay(channel)
        batch = asyncio.create_task(
            publish_batch(underlying, EVENTS_EXCHANGE, [outgoing_event(e) for e in events], 30)
        )
        await until(
            lambda: len(underlying.confirmations) == len(events), what="100 publishes issued"
        )
        # (the broker has stored them all: read from the log before the cut, not after,
        # so that the cut never lands while the proxy still forwards the batch)
        reader = await connection.channel()
        found = await asyncio.wait_for(read_ids(reader, {e.id for e in events}), 30)
        assert len(found) == len(events)
        assert not batch.done()
        proxy.cut()
        outcomes = await asyncio.wait_for(batch, 10)
    # then every message is ambiguous: unconfirmed, though the broker holds it
    assert all(isinstance(outcome, PublishInterrupted) for outcome in outcomes), outcomes[:2]


async def test_a_closed_channel_sends_nothing_and_says_so(
    connection: AbstractRobustConnection,
) -> None:
    channel = await confirming_channel(connection)
    closed = await underlay(channel)
    await channel.close()
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError, match="closed"):
        await publish_batch(closed, EVENTS_EXCHANGE, [outgoing_event(responses(1)[0])], 30)


async def test_a_batch_cancelled_while_it_waits_leaves_nothing_in_the_channel(
    amqp_url: str,
) -> None:
    proxy = Proxy(URL(amqp_url))
    async with proxy.serving() as url, await aio_pika.connect(url) as held:
        channel = await confirming_channel(held)
        await declare_topology(channel)
        proxy.holding = True  # no confirm will come
        underlying = await underlay(channel)
        batch = asyncio.create_task(
            publish_batch(
                underlying, EVENTS_EXCHANGE, [outgoing_event(e) for e in responses(50)], 30
            )
        )
        await until(lambda: len(underlying.confirmations) == 50, what="50 publishes issued")
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch
        assert not underlying.message_id_delivery_tag
        assert all(future.cancelled() for future in underlying.confirmations.values())
