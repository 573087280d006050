"""The relay against the real broker: woken by each commit, batches, crashes (issue 21, item 1).

A row committed while the relay waits is published at once (its wake-up, not a
timer: the relays here would otherwise look only once an hour); a burst from several
associations reaches a consumer exactly once and in each association's order; rows a
dead relay left in flight are published once, under their own ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from uuid import UUID

import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story
from dimsebus.services.bus.connection import confirming_channel
from dimsebus.services.bus.log import LogEntry, LogReader
from dimsebus.services.bus.outbox import Outbox, Record, read_depth
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.relay import OutboxRelay, RelayProcess
from dimsebus.services.bus.topology import (
    EVENTS_EXCHANGE,
    LOG_STREAM,
    WorkQueue,
    declare_work_queue,
)
from dimsebus.services.bus.wakeup import ArrivalListener
from dimsebus.services.clock import new_id, utc_now

AN_HOUR = 3600.0


class Arrivals:
    """What a consumer of every event got, in order."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self._changed = asyncio.Event()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.events.append(ev.parse_event(message.body))
        self._changed.set()

    @property
    def ids(self) -> list[UUID]:
        return [event.id for event in self.events]

    async def until(self, fact: Callable[[], bool], within: float, what: str) -> None:
        """Wait until ``fact()`` holds (checked on each arrival), failing after ``within`` s."""
        deadline = time.monotonic() + within
        while not fact():
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"not within {within:g} s: {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)


@pytest.fixture
async def arrivals(connection: AbstractRobustConnection) -> AsyncIterator[Arrivals]:
    """A consumer of everything published to ``dimsebus.events`` from now on."""
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(EVENTS_EXCHANGE, "#")
    got = Arrivals()
    await queue.consume(got.on_message, no_ack=True)
    yield got
    await channel.close()


def responses(count: int, association: UUID | None = None) -> list[CloudEvent]:
    """``count`` C-STORE response events of one association, message ids 1, 2, ..."""
    story = move_story(node_id="relay-test", start=utc_now(), ids=iter(new_id, None))
    template = next(e for e in story if isinstance(e, ev.CStoreResponseReceived))
    ref = template.data.association.model_copy(update={"id": association or new_id()})
    made: list[CloudEvent] = []
    for number in range(1, count + 1):
        data = template.data.model_copy(
            update={
                "association": ref,
                "message_id": number,
                "affected_sop_instance_uid": f"1.2.826.0.1.3680043.2.1125.{number}",
            }
        )
        made.append(template.model_copy(update={"id": new_id(), "data": data}))
    return made


def arrived(arrivals: Arrivals, event: CloudEvent) -> bool:
    return event.id in arrivals.ids


def commit_each(outbox: Outbox, events: list[CloudEvent]) -> None:
    """Append ``events`` one commit each, as a DIMSE thread does its responses."""
    for event in events:
        outbox.append([event])


@contextlib.asynccontextmanager
async def running_relay(
    path: Path, url: str, *, poll: float = 0.02, safety_poll: float = 2.0
) -> AsyncIterator[OutboxRelay]:
    """A relay of the outbox at ``path`` on this event loop, stopped afterwards."""
    relay = OutboxRelay(
        Outbox(path), url, name="dimsebus-test-relay", poll=poll, safety_poll=safety_poll
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def relay_and_a_later_row(
    path: Path, url: str, arrivals: Arrivals
) -> AsyncIterator[tuple[Outbox, CloudEvent]]:
    """A new relay on the outbox at ``path``, once a row committed after it started was
    published: a writer of the outbox, and that row."""
    [later] = responses(1)
    async with running_relay(path, url, safety_poll=AN_HOUR):
        writer = Outbox(path, dicom_path=True)
        writer.append([later])
        await arrivals.until(lambda: later.id in arrivals.ids, 120, "the later row published")
        yield writer, later


async def test_a_row_written_while_the_relay_waits_is_published_at_once(
    tmp_path: Path, amqp_url: str, arrivals: Arrivals
) -> None:
    # given a relay that looks at its outbox by itself only once an hour, and has
    # published a first row
    path = tmp_path / "outbox.sqlite"
    writer = Outbox(path, dicom_path=True)
    first, second = responses(2)
    async with running_relay(path, amqp_url, safety_poll=AN_HOUR):
        writer.append([first])
        await arrivals.until(lambda: first.id in arrivals.ids, 60, "the first row published")
        # when a row is committed while it waits for rows
        writer.append([second])
        # then the commit's wake-up has it published, long before the relay would look
        await arrivals.until(lambda: second.id in arrivals.ids, 60, "the second row published")
    assert arrivals.ids.count(second.id) == 1
    writer.close()


async def test_a_relay_that_cannot_hear_wake_ups_polls_and_loses_nothing(
    tmp_path: Path, amqp_url: str, arrivals: Arrivals
) -> None:
    # given the outbox's wake-up address already taken, so its relay cannot listen
    path = tmp_path / "outbox.sqlite"
    writer = Outbox(path, dicom_path=True)
    squatter = ArrivalListener(path)
    assert squatter.listening
    [row] = responses(1)
    async with running_relay(path, amqp_url, poll=0.05, safety_poll=AN_HOUR):
        # when a row is committed (its wake-up goes to the squatter)
        writer.append([row])
        # then the relay's poll finds it: a lost wake-up costs latency, not the row
        await arrivals.until(lambda: row.id in arrivals.ids, 60, "the row published")
    squatter.close()
    writer.close()


async def test_a_burst_from_several_associations_arrives_once_each_in_order(
    tmp_path: Path, amqp_url: str, arrivals: Arrivals
) -> None:
    # given a relay, and four associations' threads, each committing its responses
    # one by one, as the DIMSE threads do
    path = tmp_path / "outbox.sqlite"
    writer = Outbox(path, dicom_path=True)
    bursts = [responses(500) for _ in range(4)]
    [marker] = responses(1)
    async with running_relay(path, amqp_url, safety_poll=AN_HOUR):
        threads = [threading.Thread(target=commit_each, args=(writer, burst)) for burst in bursts]
        for thread in threads:
            thread.start()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        writer.append([marker])  # published after every row committed before it
        await arrivals.until(lambda: marker.id in arrivals.ids, 120, "the burst published")
    # then every response arrived exactly once
    sent = {event.id for burst in bursts for event in burst}
    got = Counter(event_id for event_id in arrivals.ids if event_id in sent)
    assert set(got) == sent
    assert set(got.values()) == {1}
    # and each association's in the order its thread committed them
    for burst in bursts:
        association = burst[0].data.association.id  # type: ignore[attr-defined]
        order = [
            event.data.message_id
            for event in arrivals.events
            if isinstance(event, ev.CStoreResponseReceived)
            and event.data.association.id == association
        ]
        assert order == list(range(1, 501))
    assert writer.depth() == 0
    writer.close()


async def test_rows_a_dead_relay_left_in_flight_are_published_once_under_their_ids(
    tmp_path: Path, amqp_url: str, connection: AbstractRobustConnection, arrivals: Arrivals
) -> None:
    # given two rows a relay published and died before their confirms: the broker
    # got one of them, the other was lost with the connection
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    reached, lost = responses(2)
    outbox.append([reached, lost])
    outbox.take(2, utc_now())
    await Publisher(await confirming_channel(connection)).publish(reached)
    outbox.close()
    # when a new relay starts on the outbox, and a later row is committed
    async with relay_and_a_later_row(path, amqp_url, arrivals) as (writer, _):
        pass
    # then the lost row is published under its own id, and neither twice
    assert arrivals.ids.count(reached.id) == 1
    assert arrivals.ids.count(lost.id) == 1
    assert writer.depth() == 0
    writer.close()


async def test_a_row_the_log_holds_but_a_work_queue_missed_reaches_the_queue_once(
    tmp_path: Path, amqp_url: str, connection: AbstractRobustConnection, arrivals: Arrivals
) -> None:
    # given a work queue, and a row a relay published and died before its confirm: the
    # broker wrote it to the log, and went before the queue had it (as a kill -9 can)
    channel = await connection.channel()
    work = await declare_work_queue(channel, WorkQueue("dimsebus.test-redelivery"))
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    [logged] = responses(1)
    outbox.append([logged])
    outbox.take(1, utc_now())
    log_only = await channel.declare_exchange("test.log-only", auto_delete=True, type="topic")
    stream = await channel.get_queue(LOG_STREAM, ensure=False)
    await stream.bind(log_only, "#")
    await Publisher(await confirming_channel(connection)).publish(logged, "test.log-only")
    outbox.close()
    # when a new relay starts on the outbox, and a later row is committed
    async with relay_and_a_later_row(path, amqp_url, arrivals) as (writer, later):
        # then the work queue gets the row the log held, as well as the later one
        got = [await _next(work) for _ in range(2)]
    assert {event.id for event in got} == {logged.id, later.id}
    # and the row is on the log once: sent again to the work queues alone
    assert logged.id not in arrivals.ids
    on_log = [entry.event.id async for entry in _log(connection) if entry.event is not None]
    assert on_log.count(logged.id) == 1
    assert writer.depth() == 0
    writer.close()
    await channel.close()


async def _next(queue: AbstractQueue) -> ev.Event:
    """The next message of ``queue``, acknowledged, within 60 s."""
    deadline = time.monotonic() + 60
    while (message := await queue.get(fail=False)) is None:
        assert time.monotonic() < deadline, f"nothing came on {queue.name} within 60 s"
        await asyncio.sleep(0.05)
    await message.ack()
    return ev.parse_event(message.body)


async def _log(connection: AbstractRobustConnection) -> AsyncIterator[LogEntry]:
    """Every entry of the log, from its first."""
    async with LogReader(await connection.channel(), "first") as reader:
        async for entry in reader.until_idle(1.5):
            yield entry


async def test_a_row_the_relay_cannot_make_stays_spooled_and_the_rows_after_it_flow(
    tmp_path: Path, amqp_url: str, arrivals: Arrivals, caplog: pytest.LogCaptureFixture
) -> None:
    # given an outbox whose oldest row is a record this relay cannot read (a format of
    # another version's: it reads none)
    path = tmp_path / "outbox.sqlite"
    writer = Outbox(path, dicom_path=True)
    unknown = str(new_id())
    writer.append_record(
        Record("newer/9", unknown, ev.CStoreResponseReceived.__name__, None, "t", "s", b"{}")
    )
    caplog.set_level(logging.WARNING, logger="dimsebus.services.bus.relay")
    async with running_relay(path, amqp_url, safety_poll=AN_HOUR):
        # when rows are committed after it, one at a time
        for event in responses(20):
            writer.append([event])
            await arrivals.until(functools.partial(arrived, arrivals, event), 30, "the row")
    # then each was published, and the relay never backed off for the row it cannot make:
    # it said so once, and left the row in the outbox
    said = [record.getMessage() for record in caplog.records]
    assert [line for line in said if unknown in line and "left in the outbox" in line]
    assert sum(unknown in line for line in said) == 1
    assert not [line for line in said if "not confirmed" in line]
    assert [row.event_id for row in writer.peek(10)] == [unknown]
    writer.close()


async def test_kill_9_of_the_relay_mid_burst_then_a_new_one_publishes_each_row_once(
    tmp_path: Path, amqp_url: str, arrivals: Arrivals
) -> None:
    # given a relay process publishing a burst of 3,000 rows
    path = tmp_path / "outbox.sqlite"
    writer = Outbox(path, dicom_path=True)
    burst = responses(3000)
    for start in range(0, len(burst), 100):
        writer.append(burst[start : start + 100])
    first = RelayProcess(path, amqp_url, name="dimsebus-test-relay")
    sent = {event.id for event in burst}

    def published() -> int:
        return sum(event_id in sent for event_id in arrivals.ids)

    # when it is killed (SIGKILL) once some of them were published
    await arrivals.until(lambda: published() >= 300, 120, "the first rows published")
    first._process.kill()  # kill -9: no chance to tidy up
    first._process.wait()
    assert read_depth(path) > 0, "the burst was all published before the kill"
    # and a new relay starts on the same outbox
    second = RelayProcess(path, amqp_url, name="dimsebus-test-relay")
    try:
        [marker] = responses(1)
        writer.append([marker])
        await arrivals.until(lambda: marker.id in arrivals.ids, 180, "the rest published")
    finally:
        second.stop()
    # then every row reached the broker exactly once, under its own id
    got = Counter(event_id for event_id in arrivals.ids if event_id in sent)
    assert set(got) == sent
    assert set(got.values()) == {1}
    assert read_depth(path) == 0
    writer.close()
