"""Reading the ``dimsebus.log`` stream from an offset (first, last, next or a number)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiormq.abc
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage

from dimsebus.schemas.events import Event
from dimsebus.schemas.limits import MAX_BODY_BYTES
from dimsebus.services.bus.brokers import masked
from dimsebus.services.bus.codec import decode_body
from dimsebus.services.bus.stream_client import (
    MAX_FRAME,
    ChunkNotReadable,
    StreamAddress,
    StreamSubscription,
)
from dimsebus.services.bus.stream_wire import WireError, amqp_message
from dimsebus.services.bus.topology import LOG_STREAM
from dimsebus.services.clock import utc_now
from dimsebus.services.errors import ConfigError, InvalidEvent

log = logging.getLogger(__name__)

LogProtocol = Literal["stream", "amqp"]
NAMED_OFFSETS = ("first", "last", "next")
FIRST_CREDIT = 32  # chunks a stream subscription asks for before it knows how big they are
MAX_CREDIT = 2000  # chunks asked for at most at once (a chunk holds one record at least)
CREDIT_STEP = 16  # credit is given in steps of at least this many chunks
CLOCK_SKEW = dt.timedelta(seconds=5)
"""How far the broker's clock may be behind this host's, for a resume by time."""


def log_stopped() -> ConnectionError:
    """What a batch raises once the log stopped delivering and every entry was taken."""
    return ConnectionError("the log stopped delivering (its channel closed)")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One message of the log: its stream offset and its event, or why it is not one.

    A record that is not a valid event (too big, not the contract, not under its own
    routing key) is an entry with ``error``: readers skip it, naming the offset.
    """

    offset: int
    routing_key: str
    event: Event | None
    error: str | None = None


def parse_offset(text: str) -> str | int:
    """``first``, ``last``, ``next`` or a non-negative integer offset."""
    if text in NAMED_OFFSETS:
        return text
    if text.isdigit():
        return int(text)
    raise ConfigError(f"--from: {text!r} is not first, last, next or a stream offset")


class _Reader:
    """What both ways of reading the log share: a queue of what arrived, taken in batches.

    A subclass fills ``_deliveries``, calls ``_wake`` and ``_end``, and says how an item
    becomes an entry (``_entry``), how its credit is counted (``_taken``) and given back
    (``_give_credit``).
    """

    def __init__(self, max_body_bytes: int) -> None:
        self._max_body_bytes = max_body_bytes
        self._deliveries: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False

    def _end(self, _: object = None) -> None:
        """The log stopped delivering (its channel or connection closed, the stream deleted)."""
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> _Reader:
        return self

    async def until_idle(self, idle: float = 2.0) -> AsyncIterator[LogEntry]:
        """Entries until none arrives for ``idle`` seconds: the end of the log, for a replay."""
        while True:
            try:
                yield await asyncio.wait_for(self.__anext__(), idle)
            except TimeoutError:
                return

    async def __anext__(self) -> LogEntry:
        await self._give_credit()
        while not self._deliveries:
            if self._ended:
                raise StopAsyncIteration
            await self._wait()
        return self._entry(self._taken(1)[0])

    async def batch(self, size: int, wait: float, gather: float = 0.01) -> list[LogEntry]:
        """Up to ``size`` entries: those that have arrived, or the first to come within ``wait``
        seconds (none: an empty list). Raises ``ConnectionError`` once the log stopped
        delivering (its channel closed) and every entry was taken.

        Behind (an eighth of ``size`` waiting: a replay, a catch-up), the batch also waits
        for the deliveries that keep coming (one at least every half millisecond), up to
        ``gather`` seconds: a backlog is folded in batches of ``size``, not of what one read
        of the socket brought. Not behind (live), a batch is what has arrived, at once.
        """
        await self._give_credit()
        if not self._deliveries and not self._ended:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait(), wait)
        if not self._deliveries and self._ended:
            raise self._stopped()
        loop = asyncio.get_running_loop()
        until = loop.time() + (gather if len(self._deliveries) >= size // 8 else 0.0)
        while 0 < len(self._deliveries) < size and not self._ended and loop.time() < until:
            before = len(self._deliveries)
            await asyncio.sleep(0.0005)
            if len(self._deliveries) == before:
                break
        return [self._entry(item) for item in self._taken(size)]

    def _stopped(self) -> ConnectionError:
        """What a batch raises once the log stopped delivering and every entry was taken."""
        return log_stopped()

    async def _wait(self) -> None:
        """Until a delivery comes or the log ends."""
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    async def _give_credit(self) -> None:
        raise NotImplementedError

    def _taken(self, size: int) -> list[Any]:
        """Up to ``size`` items, oldest first (a subclass counts its credit here)."""
        return self._oldest(size)

    def _oldest(self, size: int) -> list[Any]:
        return [self._deliveries.popleft() for _ in range(min(size, len(self._deliveries)))]

    def _entry(self, item: Any) -> LogEntry:
        raise NotImplementedError

    def _decoded(self, offset: int, key: str | None, body: bytes) -> LogEntry:
        """The entry of a record's body published under ``key`` (None: the record does not
        say, so it is not checked), or why it is not an event."""
        try:
            event = decode_body(body, key, self._max_body_bytes)
        except InvalidEvent as exc:
            return LogEntry(offset, key or "", None, str(exc))
        return LogEntry(offset, key or event.routing_key, event)


class LogReader(_Reader):
    """Reads the log from ``offset`` on; subscribed once ``async with`` has entered.

    The reader owns ``channel`` and closes it on exit. Entering before publishing
    guarantees that ``offset="next"`` sees what follows.

    It consumes on the channel's aiormq channel, not through aio-pika's queue
    iterator: a delivery is queued as aiormq parsed it, without aio-pika's message
    object and its task per message (half the reader's CPU per entry in
    the replay profile of issue 21). At most ``prefetch`` deliveries wait; the
    acks that make room are multiple, one per ``prefetch // 4`` entries read.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        offset: str | int | dt.datetime = "first",
        *,
        prefetch: int = 1000,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._channel = channel
        self._offset = offset
        self._prefetch = prefetch
        super().__init__(max_body_bytes)
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._unacked = 0
        self._ack_tag: int | None = None
        self._ack_every = max(1, min(500, prefetch // 4))

    async def __aenter__(self) -> LogReader:
        await self._channel.set_qos(prefetch_count=self._prefetch)
        underlay = await self._channel.get_underlay_channel()
        self._underlay = underlay
        underlay.on_consumer_cancel_callbacks.add(self._end)
        underlay.closing.add_done_callback(self._end)
        await underlay.basic_consume(
            LOG_STREAM, self._deliver, arguments={"x-stream-offset": self._offset}
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Closing the channel returns unacked deliveries; a nack would make the
        # stream close the connection.
        await self._channel.close()

    async def _deliver(self, message: DeliveredMessage) -> None:
        self._deliveries.append(message)
        self._wake()

    async def _give_credit(self) -> None:
        assert self._underlay is not None, "enter the reader with `async with` first"
        if self._ack_tag is not None and not self._ended:
            # A stream needs acks only as credit: one multiple-ack per part of the prefetch
            # saves frames. It is sent before the next entry is taken, so that a reader
            # cancelled while it waits (until_idle) never loses an entry it took.
            tag, self._ack_tag = self._ack_tag, None
            await self._underlay.basic_ack(tag, multiple=True)

    def _taken(self, size: int) -> list[DeliveredMessage]:
        """Up to ``size`` deliveries, oldest first; credit is due once enough were taken."""
        taken = self._oldest(size)
        if taken:
            self._unacked += len(taken)
            if self._unacked >= self._ack_every:
                self._unacked, self._ack_tag = 0, taken[-1].delivery_tag
        return taken

    def _entry(self, message: DeliveredMessage) -> LogEntry:
        headers = message.header.properties.headers or {}
        offset = int(headers.get("x-stream-offset", -1))  # type: ignore[arg-type]
        return self._decoded(offset, message.routing_key or "", message.body)


class StreamLogReader(_Reader):
    """The log read over RabbitMQ's stream protocol (``stream_client``), from ``offset`` on;
    the same entries, in the same batches, as ``LogReader``'s.

    A Deliver frame is a chunk of records (what the broker wrote at once: a relay's batch,
    a few publishes), read in one go. Credit is counted in chunks, so it is sized from
    the chunks seen: about ``max_waiting`` records may wait or be on their way, which
    bounds the reader's memory, and it is given as soon as records are taken, not when
    the next batch is asked for, so the broker sends while a batch is folded.

    Opening raises ``ConnectionError`` when the broker's stream port does not answer or
    refuses (``StreamRefused``): the caller may read over AMQP instead.
    """

    def __init__(
        self,
        address: StreamAddress,
        offset: str | int | dt.datetime = "first",
        *,
        name: str = "dimsebus",
        max_waiting: int = 4000,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_frame: int = MAX_FRAME,
    ) -> None:
        super().__init__(max_body_bytes)
        self._offset = offset
        self._max_waiting = max_waiting
        self._in_flight = FIRST_CREDIT  # chunks asked for that have not arrived
        self._chunks = self._records = 0  # seen so far: how big a chunk is
        self._first: int | None = None  # the offset of the first record that arrived
        self._made_at = utc_now()  # no later than its subscription: a safe time to resume from
        self._subscription = StreamSubscription(address, name, self._arrived, max_frame)

    async def __aenter__(self) -> StreamLogReader:
        await self._subscription.open(LOG_STREAM, self._offset, FIRST_CREDIT)
        self._subscription.ended.add_done_callback(self._end)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._subscription.close()
        self._end()

    @property
    def reason(self) -> BaseException | None:
        """Why the subscription ended, once it has."""
        return self._subscription.reason

    @property
    def resume_from(self) -> str | int | dt.datetime:
        """Where to read the log again, by another reader, to miss nothing this one did not
        give out: the first record that arrived; with none, its start, where that is a
        place in the log ("first", an offset). A start of "next" or "last" is a moment,
        not a place: asked for again later, it would skip what was written since, so it
        is read from when this reader was made (just before it subscribed), less
        ``CLOCK_SKEW`` (the broker's clock is not this host's). What comes twice,
        consumers dedupe (DESIGN.md rule 2).
        """
        if self._first is not None:
            return self._first
        if isinstance(self._offset, int) or self._offset == "first":
            return self._offset
        return self._made_at - CLOCK_SKEW

    def _stopped(self) -> ConnectionError:
        """``ChunkNotReadable`` when that is why the subscription ended (reading on over
        the stream protocol would stop at the same chunk again), with ``resume_from``."""
        reason = self.reason
        if not isinstance(reason, ChunkNotReadable):
            return log_stopped()
        reason.resume_from = self.resume_from
        return reason

    def _arrived(self, records: list[tuple[int, bytes]]) -> None:
        """One chunk's records, those before the start offset left out."""
        self._in_flight -= 1
        self._chunks += 1
        self._records += len(records)
        if records:
            if self._first is None:
                self._first = records[0][0]
            self._deliveries.extend(records)
            self._wake()
        self._top_up()

    def _top_up(self) -> None:
        """Ask for the chunks that keep about ``max_waiting`` records waiting or coming."""
        if self._ended:
            return
        per_chunk = max(1.0, self._records / self._chunks) if self._chunks else 1.0
        room = (self._max_waiting - len(self._deliveries)) / per_chunk
        wanted = min(int(room), MAX_CREDIT) - self._in_flight
        if wanted >= CREDIT_STEP or (wanted > 0 and self._in_flight == 0):
            self._in_flight += wanted
            self._subscription.give_credit(wanted)

    async def _give_credit(self) -> None:
        """Given as records are taken (``_taken``)."""

    def _taken(self, size: int) -> list[tuple[int, bytes]]:
        taken = self._oldest(size)
        self._top_up()
        return taken

    def _entry(self, item: tuple[int, bytes]) -> LogEntry:
        offset, record = item
        try:
            key, body = amqp_message(record)
        except WireError as exc:
            return LogEntry(offset, "", None, f"not an AMQP message: {exc}")
        return self._decoded(offset, key, body)


class LogReading(Protocol):
    """How a service reads the log (its ``LogSettings``)."""

    @property
    def log_protocol(self) -> LogProtocol: ...

    @property
    def stream_port(self) -> int | None: ...

    @property
    def max_body_bytes(self) -> int: ...


@contextlib.asynccontextmanager
async def open_log(
    connection: AbstractConnection,
    start: str | int | dt.datetime,
    reading: LogReading,
    *,
    name: str,
    prefetch: int = 1000,
) -> AsyncIterator[LogReader | StreamLogReader]:
    """The log from ``start``, read while entered: over the stream protocol on the broker
    ``connection`` is connected to (``reading.log_protocol`` "stream"), else over AMQP on a
    channel of ``connection``.

    A broker whose stream port does not answer or refuses (the plugin not enabled, a
    node without a replica of the log) is read over AMQP, said in one line naming
    ``name``, the reader (also the stream connection's name).
    """
    reader: LogReader | StreamLogReader | None = await _entered_log(
        connection, start, reading, name
    )
    if reader is None:
        limit = reading.max_body_bytes
        reader = LogReader(
            await connection.channel(), start, prefetch=prefetch, max_body_bytes=limit
        )
        await reader.__aenter__()
    try:
        yield reader
    finally:
        await reader.__aexit__(None, None, None)


async def _entered_log(
    connection: AbstractConnection, start: str | int | dt.datetime, reading: LogReading, name: str
) -> StreamLogReader | None:
    """The log over the stream protocol, entered; None where it is to be read over AMQP."""
    if reading.log_protocol == "stream":
        url = str(connection.url)  # type: ignore[attr-defined]  # aio-pika's have one
        address: StreamAddress | None = None
        try:
            address = StreamAddress.of(url, reading.stream_port)
            limit = reading.max_body_bytes
            reader = StreamLogReader(address, start, name=name, max_body_bytes=limit)
            return await reader.__aenter__()
        except (OSError, TimeoutError) as exc:
            log.warning(
                "%s reading dimsebus.log over AMQP: the stream protocol at %s did not "
                "serve it (%s)",
                name,
                masked(url) if address is None else f"{address.host}:{address.port}",
                exc or type(exc).__name__,
            )
    return None
