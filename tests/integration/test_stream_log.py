"""The log read over RabbitMQ's stream protocol: the same entries as over AMQP, from any
offset, and a tracker that falls back to AMQP where the stream port does not serve it."""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import UUID

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story
from dimsebus.services.bus import log as bus_log
from dimsebus.services.bus.codec import outgoing_event
from dimsebus.services.bus.log import (
    LogEntry,
    LogProtocol,
    LogReader,
    StreamLogReader,
    open_log,
)
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.stream_client import ChunkTooLarge, StreamAddress, StreamRefused
from dimsebus.services.bus.topology import EVENTS_EXCHANGE
from dimsebus.services.clock import new_id, utc_now
from dimsebus.services.settings import LogSettings
from dimsebus.services.tracker.app import TrackerSettings
from dimsebus.services.tracker.progress import move_key
from dimsebus.services.tracker.store import open_store
from tests.integration.conftest import until

pytestmark = pytest.mark.integration


def some_events(count: int) -> list[CloudEvent]:
    story = move_story(node_id="streamed", start=utc_now(), ids=iter(new_id, None), instances=count)
    return [e for e in story if not isinstance(e, ev.COMMAND_MODELS)][:count]


def stream_address(amqp_url: str) -> StreamAddress:
    """Where the test broker serves the stream protocol (a container's mapped port)."""
    port = os.environ.get("DIMSEBUS_STREAM_PORT")
    return StreamAddress.of(amqp_url, int(port) if port else None)


def seen(entries: list[LogEntry]) -> list[tuple[int, str, str]]:
    """What a reader made of each entry: its offset, routing key and event id or error."""
    return [
        (e.offset, e.routing_key, str(e.event.id) if e.event else f"error: {e.error}")
        for e in entries
    ]


async def read_all(reader: LogReader | StreamLogReader, count: int) -> list[LogEntry]:
    """The first ``count`` entries ``reader`` gives (entered here)."""
    async with reader:
        return await take(reader, count)


async def take(reader: LogReader | StreamLogReader, count: int) -> list[LogEntry]:
    found: list[LogEntry] = []
    while len(found) < count:
        batch = await reader.batch(500, wait=10.0)
        assert batch, f"{len(found)} of {count} entries came within 10 s"
        found += batch
    return found[:count]


async def test_the_stream_protocol_reads_the_same_entries_as_amqp(
    amqp_url: str, connection: AbstractRobustConnection, channel: AbstractChannel
) -> None:
    events = some_events(45)
    publisher = Publisher(channel)
    async with LogReader(await connection.channel(), "next") as amqp_reader:
        # given a log written as relays write it (batches of 10, a chunk each or more), one
        # event at a time, and a body that is no event under an event's routing key
        for at in range(0, 30, 10):
            await publisher.send_batch([outgoing_event(e) for e in events[at : at + 10]])
        await publisher.publish_all(events[30:40])
        raw = await channel.get_exchange(EVENTS_EXCHANGE)
        await raw.publish(aio_pika.Message(b"{not json"), "dicom.association.released")
        await publisher.publish_all(events[40:])
        total = 46
        # when it is read over AMQP and over the stream protocol, from its first offset
        over_amqp = await take(amqp_reader, total)
    address = stream_address(amqp_url)
    streamed = await read_all(StreamLogReader(address, over_amqp[0].offset), total)
    # then both give every entry with the same offset, routing key and event, in order
    assert seen(streamed) == seen(over_amqp)
    assert [e.event.id for e in streamed if e.event] == [e.id for e in events]
    assert [e.error for e in streamed if e.error] == [over_amqp[40].error]
    assert "Invalid JSON" in str(over_amqp[40].error)
    # and read from an offset inside a batch's chunk, the stream starts at that offset
    later = await read_all(StreamLogReader(address, over_amqp[13].offset), total - 13)
    assert seen(later) == seen(over_amqp[13:])


async def test_a_stream_reader_takes_what_comes_next_and_ends_with_its_connection(
    amqp_url: str, channel: AbstractChannel
) -> None:
    # given a stream reader of what comes next
    reader = StreamLogReader(stream_address(amqp_url), "next")
    async with reader:
        events = some_events(3)
        await Publisher(channel).publish_all(events)
        # then what is published after it subscribed arrives, live
        found: list[LogEntry] = []
        while len(found) < 3:
            batch = await reader.batch(16, wait=10.0)
            assert batch, "a live event did not arrive within 10 s"
            found += batch
        assert [e.event.id for e in found if e.event] == [e.id for e in events]
        # and once its connection is gone, the next batch says the log stopped delivering
        await reader.__aexit__(None, None, None)
        with pytest.raises(ConnectionError, match="stopped delivering"):
            await reader.batch(16, wait=5.0)


async def test_a_stream_subscription_to_a_vhost_it_may_not_open_is_refused(
    amqp_url: str,
) -> None:
    address = stream_address(amqp_url)
    elsewhere = StreamAddress(
        address.host, address.port, address.user, address.password, "no-such-vhost", None
    )
    with pytest.raises(StreamRefused, match="opening vhost no-such-vhost"):
        await StreamLogReader(elsewhere, "first").__aenter__()


async def folded(settings: TrackerSettings, offset: int) -> None:
    """Once the tracker's checkpoint is at ``offset`` or past it."""
    store = open_store(settings.db)
    try:
        await until(lambda: (store.checkpoint() or -1) >= offset, within=30.0, what="the fold")
    finally:
        store.close()


def a_closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("serves", [True, False], ids=["stream-port", "nothing-listens"])
async def test_a_tracker_reads_over_the_stream_protocol_or_says_it_reads_over_amqp(
    serves: bool,
    start_tracker: Callable[..., Awaitable[TrackerSettings]],
    channel: AbstractChannel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a tracker whose broker serves the stream protocol, or one told that the stream
    # port is one where nothing listens
    caplog.set_level(logging.WARNING, logger="dimsebus.services.bus.log")
    await Publisher(channel).publish_all(some_events(5))
    extra = {} if serves else {"stream_port": a_closed_port()}
    settings = await start_tracker(db=tmp_path / "t.sqlite", **extra)
    # then it folds the log either way
    await folded(settings, 4)
    # and where it fell back to AMQP, it said so in one line naming the port; the choice
    # of reader comes before the first fold, so a tracker that did not say so read streamed
    lines = [r.getMessage() for r in caplog.records if "over AMQP" in r.getMessage()]
    if serves:
        assert lines == []
    else:
        assert len(lines) == 1
        assert f":{settings.stream_port} did not serve it" in lines[0]


@pytest.mark.parametrize(
    ("protocol", "serves"),
    [("stream", True), ("stream", False), ("amqp", True)],
    ids=["stream", "stream-port-closed", "amqp"],
)
async def test_every_reader_of_the_log_opens_it_over_the_stream_protocol_or_says_why_not(
    protocol: LogProtocol,
    serves: bool,
    amqp_url: str,
    connection: AbstractRobustConnection,
    channel: AbstractChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a log holding a few events
    events = some_events(3)
    await Publisher(channel).publish_all(events)
    port = stream_address(amqp_url).port if serves else a_closed_port()
    # when a reader (the audit replay, events tail, the tracker) opens it as configured
    caplog.set_level(logging.WARNING, logger="dimsebus.services.bus.log")
    reading = LogSettings(amqp_url=amqp_url, log_protocol=protocol, stream_port=port)
    async with open_log(connection, "first", reading, name="dimsebus-probe") as reader:
        wanted, found = {e.id for e in events}, set[UUID]()
        while not wanted <= found:
            batch = await reader.batch(500, wait=10.0)
            assert batch, f"{len(wanted - found)} of the events did not come within 10 s"
            found |= {e.event.id for e in batch if e.event is not None}
    # then it read them over the stream protocol where asked and served, else over AMQP
    streamed = protocol == "stream" and serves
    assert isinstance(reader, StreamLogReader if streamed else LogReader)
    # and a fallback is said in one line naming the reader and the port
    lines = [r.getMessage() for r in caplog.records if "over AMQP" in r.getMessage()]
    if protocol == "stream" and not serves:
        assert len(lines) == 1
        assert lines[0].startswith("dimsebus-probe reading dimsebus.log over AMQP")
        assert f":{port} did not serve it" in lines[0]
    else:
        assert lines == []


async def test_a_chunk_over_the_frame_bound_ends_the_stream_and_the_tracker_reads_on_over_amqp(
    amqp_url: str,
    start_tracker: Callable[..., Awaitable[TrackerSettings]],
    connection: AbstractRobustConnection,
    channel: AbstractChannel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a log holding a batch of 30 events published in one write (a chunk of several
    # KB), and readers that take frames of 4 KB at most
    events = some_events(30)
    await Publisher(channel).send_batch([outgoing_event(e) for e in events])
    small = functools.partial(StreamLogReader, max_frame=4096)
    # when a stream reader reaches that chunk, then it ends, saying why
    with pytest.raises(ChunkTooLarge, match="over 4096"):
        await read_all(small(stream_address(amqp_url), "first"), 10**6)
    # and a tracker whose stream stops there reads on over AMQP, said in one line
    caplog.set_level(logging.WARNING, logger="dimsebus.services.tracker.app")
    monkeypatch.setattr(bus_log, "StreamLogReader", small)
    settings = await start_tracker(db=tmp_path / "t.sqlite")
    await until(lambda: any("over AMQP from" in r.getMessage() for r in caplog.records))
    # and folds the whole log: the big chunk, and what is published after it
    async with LogReader(await connection.channel(), "next") as later:
        await Publisher(channel).publish_all(some_events(2))
        last = (await take(later, 2))[-1].offset
    await folded(settings, last)


async def test_a_tracker_started_at_next_whose_stream_stops_at_once_misses_nothing(
    amqp_url: str,
    start_tracker: Callable[..., Awaitable[TrackerSettings]],
    channel: AbstractChannel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a tracker with nothing committed, reading from "next" with frames of 4 KB at most
    caplog.set_level(logging.WARNING, logger="dimsebus.services.tracker.app")
    monkeypatch.setattr(
        bus_log, "StreamLogReader", functools.partial(StreamLogReader, max_frame=4096)
    )
    settings = await start_tracker(db=tmp_path / "t.sqlite", start_from="next")
    # when the first thing written after it opened is a chunk over that bound (one move's
    # 30 events in one write), and then a little more
    events = some_events(30)
    await Publisher(channel).send_batch([outgoing_event(e) for e in events])
    await until(lambda: any("over AMQP from" in r.getMessage() for r in caplog.records))
    await Publisher(channel).publish_all(later := some_events(2))
    # then it folds what came after, and the big chunk too: the AMQP reader that replaces
    # the stream's starts from when that one opened, not at a later "next"
    store = open_store(settings.db)
    try:
        keys = [move_key(events[-1]), move_key(later[-1])]
        await until(
            lambda: all(key is not None and store.load(key) for key in keys),
            within=30.0,
            what="both moves folded",
        )
    finally:
        store.close()
