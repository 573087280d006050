"""The log read in batches, as the tracker folds it: in order, bounded, and what waited."""

from __future__ import annotations

import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story
from dimsebus.services.bus.log import LogEntry, LogReader
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.clock import new_id, utc_now

pytestmark = pytest.mark.integration


async def test_batches_hold_what_arrived_in_log_order_and_at_most_their_size(
    connection: AbstractRobustConnection, channel: AbstractChannel
) -> None:
    # given a reader of what comes next, and 40 events published
    story = move_story(node_id="batches", start=utc_now(), ids=iter(new_id, None), instances=36)
    events = [event for event in story if not isinstance(event, ev.COMMAND_MODELS)]
    async with LogReader(await connection.channel(), "next") as reader:
        await Publisher(channel).publish_all(events[:40])
        # when it reads batches of at most 16 entries
        batches: list[list[LogEntry]] = []
        while sum(map(len, batches)) < 40:
            batches.append(await reader.batch(16, wait=5.0))
            assert batches[-1], "an event published did not arrive within 5 s"
        # then every event came once, in the order published, with rising offsets
        entries = [entry for batch in batches for entry in batch]
        assert [e.event.id if e.event else None for e in entries] == [e.id for e in events[:40]]
        offsets = [entry.offset for entry in entries]
        assert offsets == sorted(offsets)
        assert len(set(offsets)) == 40
        # and no batch was over its size, and the ones that waited were taken together
        assert max(map(len, batches)) <= 16
        assert len(batches) < 40
        # and with nothing more to read, a batch is empty once its wait is over
        assert await reader.batch(16, wait=0.1) == []


async def test_a_batch_after_the_log_stopped_delivering_raises(
    connection: AbstractRobustConnection,
) -> None:
    # given a reader whose channel the broker closed
    channel = await connection.channel()
    async with LogReader(channel, "next") as reader:
        await channel.close()
        # when a batch is asked for, then it says the log stopped delivering
        with pytest.raises(ConnectionError, match="stopped delivering"):
            await reader.batch(16, wait=5.0)
