"""The consumer runner: prefetch, manual ack, and one place that maps errors to dispositions.

A handler returns once its effect is durable; only then is the message acked.
A message that is not a valid event, or that the handler declares
``Unprocessable``, is parked: re-published to ``dimsebus.dlx`` with the reason
in ``x-dimsebus-reason``, which routes it to ``<queue>.dead``. So is a body over
``max_body_bytes`` (unparsed), and an event under another routing key than its
own (a publisher may only use the keys its broker user is allowed). Any other error
requeues it after a short back-off, and the quorum queue's ``x-delivery-limit``
dead-letters it if it keeps failing, so nothing loops forever.

Deliveries are consumed on the channel's aiormq channel, as aiormq parsed them: aio-pika's
message object costs more per delivery than validating the event (issue 21). The acks of
the handlers that finish together go in one frame (``AckGroup``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Protocol

import aio_pika
import aiormq.abc
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelInvalidStateError
from aiormq.abc import DeliveredMessage

from dimsebus.schemas.events import Event
from dimsebus.schemas.limits import MAX_BODY_BYTES
from dimsebus.services.backoff import delay_for, jittered
from dimsebus.services.bus.codec import decode_body
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.topology import DEAD_LETTER_EXCHANGE, WorkQueue, declare_work_queue
from dimsebus.services.errors import InvalidEvent, Unprocessable
from dimsebus.services.metrics import MESSAGES_PARKED

log = logging.getLogger(__name__)

Handler = Callable[[Event], Awaitable[None]]
REASON_HEADER = "x-dimsebus-reason"
ERROR_HEADER = "x-dimsebus-error"


class Disposition(StrEnum):
    """What happens to a delivery once its handler has run."""

    ACK = "ack"
    PARK = "park"
    REQUEUE = "requeue"


def disposition_for(error: BaseException | None) -> Disposition:
    """The one mapping from a handler's outcome to the message's fate."""
    if error is None:
        return Disposition.ACK
    if isinstance(error, InvalidEvent | Unprocessable):
        return Disposition.PARK
    return Disposition.REQUEUE


def requeue_delay(delivery_count: int, first: float = 0.2, limit: float = 5.0) -> float:
    """Seconds to wait before requeueing a message delivered ``delivery_count`` times before."""
    return delay_for(delivery_count, first, limit)


def parked_message(message: DeliveredMessage, queue: str, error: BaseException) -> aio_pika.Message:
    """A copy of ``message`` that carries why ``queue``'s consumer parked it."""
    properties = message.header.properties
    headers = dict(properties.headers or {})
    headers.update(
        {
            REASON_HEADER: str(error),
            ERROR_HEADER: type(error).__name__,
            "x-original-exchange": message.exchange or "",
            "x-original-routing-key": message.routing_key or "",
            "x-original-queue": queue,
        }
    )
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=properties.content_type,
        message_id=properties.message_id,
        type=properties.message_type,
        timestamp=properties.timestamp,
        correlation_id=properties.correlation_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


class Acking(Protocol):
    """What ``AckGroup`` needs of a channel: aiormq's ``basic_ack``."""

    def basic_ack(
        self, delivery_tag: int, multiple: bool = False, wait: bool = True
    ) -> Awaitable[None]:
        """Ack ``delivery_tag`` (and, ``multiple``, every unsettled delivery before it)."""


class AckGroup:
    """The acks of one channel's deliveries, sent together: one frame for those that settle
    in one turn of the event loop, as a group commit does.

    A multiple-ack acks every unsettled delivery up to its tag, so it is sent only when
    the acked deliveries are the oldest unsettled ones; otherwise (one delivery still in
    its handler, or waiting to be requeued) each is acked on its own. One flush at a time,
    so that the frames reach the broker in the order they were decided.
    """

    def __init__(self, channel: Acking) -> None:
        self._channel = channel
        self._unsettled: dict[int, None] = {}  # delivery tags, in the order of delivery
        self._acked: list[int] = []
        self._flushing = False

    def delivered(self, tag: int) -> None:
        """Note a delivery that will be acked here or settled otherwise (``settled``)."""
        self._unsettled[tag] = None

    def settled(self, tag: int) -> None:
        """Forget a delivery settled by other means (a nack, once it is sent)."""
        self._unsettled.pop(tag, None)

    async def ack(self, tag: int) -> None:
        """Ack ``tag`` with the others of this turn of the loop; returns once it is queued."""
        self._acked.append(tag)
        if self._flushing:
            return  # the flush under way sends it
        self._flushing = True
        try:
            await asyncio.sleep(0)  # the handlers finishing in this turn add theirs
            while self._acked:
                tags, self._acked = sorted(self._acked), []
                await self._send(tags)
        finally:
            self._flushing = False

    async def _send(self, tags: list[int]) -> None:
        oldest = list(itertools.islice(self._unsettled, len(tags)))
        for tag in tags:
            del self._unsettled[tag]
        if oldest == tags:
            await self._channel.basic_ack(tags[-1], multiple=True)
            return
        for tag in tags:
            await self._channel.basic_ack(tag)


class Consumer:
    """Runs ``handler`` for every event on a work queue."""

    def __init__(
        self,
        channel: AbstractChannel,
        queue: WorkQueue,
        handler: Handler,
        *,
        prefetch: int = 64,
        max_body_bytes: int = MAX_BODY_BYTES,
        replicas: int | None = None,
    ) -> None:
        """A consumer of ``queue``, which it declares (on ``replicas`` nodes) when started."""
        self._channel = channel
        self._replicas = replicas
        self._queue = queue
        self._handler = handler
        self._prefetch = prefetch
        self._max_body_bytes = max_body_bytes
        self._parker = Publisher(channel)
        self._consuming: tuple[aiormq.abc.AbstractChannel, str] | None = None
        self._acks: AckGroup | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        """Declare the queue and start consuming; returns once the consumer is registered."""
        await self._channel.set_qos(prefetch_count=self._prefetch)
        queue = await declare_work_queue(self._channel, self._queue, self._replicas)
        underlay = await self._channel.get_underlay_channel()
        self._acks = AckGroup(underlay)
        ok = await underlay.basic_consume(queue.name, self.on_delivery)
        self._consuming = (underlay, ok.consumer_tag or "")

    async def stop(self, within: float = 10.0) -> None:
        """Take no more deliveries, and let those being handled settle (up to ``within`` s).

        What is still unsettled when the channel closes goes back to the queue.
        """
        if self._consuming is not None:
            underlay, tag = self._consuming
            if not underlay.is_closed:
                with contextlib.suppress(*CONNECTION_EXCEPTIONS, ChannelInvalidStateError):
                    await underlay.basic_cancel(tag)
        self._consuming = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)

    async def on_delivery(self, message: DeliveredMessage) -> None:
        """Decode, handle, then settle the delivery by the outcome."""
        assert self._acks is not None, "start the consumer first"
        tag = message.delivery_tag or 0
        self._acks.delivered(tag)
        self._in_flight += 1
        self._idle.clear()
        try:
            error: Exception | None = None
            try:
                key = message.routing_key or ""
                await self._handler(decode_body(message.body, key, self._max_body_bytes))
            except Exception as exc:
                error = exc
            try:
                await self._settle(message, tag, error)
            except (*CONNECTION_EXCEPTIONS, ChannelInvalidStateError) as exc:
                log.warning(
                    "cannot settle message %s (%r); the broker will deliver it again",
                    message.header.properties.message_id,
                    exc,
                )
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _settle(self, message: DeliveredMessage, tag: int, error: Exception | None) -> None:
        assert self._acks is not None
        match disposition_for(error):
            case Disposition.ACK:
                await self._acks.ack(tag)
            case Disposition.PARK:
                assert error is not None
                message_id = message.header.properties.message_id
                log.warning("parking message %s from %s: %s", message_id, self._queue.name, error)
                await self._parker.send(
                    parked_message(message, self._queue.name, error),
                    DEAD_LETTER_EXCHANGE,
                    self._queue.name,
                )
                await self._acks.ack(tag)
                MESSAGES_PARKED.labels(self._queue.name).inc()
            case Disposition.REQUEUE:
                headers = message.header.properties.headers or {}
                count = int(str(headers.get("x-delivery-count") or 0))
                log.error(
                    "handler failed on message %s (delivery %d): %r",
                    message.header.properties.message_id,
                    count + 1,
                    error,
                )
                # Jittered: the failures of one outage do not all come back at once.
                await asyncio.sleep(jittered(requeue_delay(count), 0.1))
                await message.channel.basic_nack(tag, requeue=True)
                self._acks.settled(tag)
