"""The consumer runner: prefetch, manual ack, and one place that maps errors to dispositions.

A handler returns once its effect is durable; only then is the message acked.
A message that is not a valid event, or that the handler declares
``Unprocessable``, is parked: re-published to ``dimsebus.dlx`` with the reason
in ``x-dimsebus-reason``, which routes it to ``<queue>.dead``. So is a body over
``max_body_bytes`` (unparsed), and an event under another routing key than its
own (a publisher may only use the keys its broker user is allowed). Any other error
requeues it after a short back-off, and the quorum queue's ``x-delivery-limit``
dead-letters it if it keeps failing, so nothing loops forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelInvalidStateError

from dimsebus.schemas.events import Event
from dimsebus.schemas.limits import MAX_BODY_BYTES
from dimsebus.services.backoff import delay_for, jittered
from dimsebus.services.bus.codec import from_message
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


def parked_message(
    message: AbstractIncomingMessage, queue: str, error: BaseException
) -> aio_pika.Message:
    """A copy of ``message`` that carries why ``queue``'s consumer parked it."""
    headers = dict(message.headers or {})
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
        content_type=message.content_type,
        message_id=message.message_id,
        type=message.type,
        timestamp=message.timestamp,
        correlation_id=message.correlation_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


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
        self._consuming: tuple[AbstractQueue, str] | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        """Declare the queue and start consuming; returns once the consumer is registered."""
        await self._channel.set_qos(prefetch_count=self._prefetch)
        queue = await declare_work_queue(self._channel, self._queue, self._replicas)
        self._consuming = (queue, await queue.consume(self.on_message))

    async def stop(self, within: float = 10.0) -> None:
        """Take no more deliveries, and let those being handled settle (up to ``within`` s).

        What is still unsettled when the channel closes goes back to the queue.
        """
        if self._consuming is not None and not self._channel.is_closed:
            queue, tag = self._consuming
            with contextlib.suppress(*CONNECTION_EXCEPTIONS, ChannelInvalidStateError):
                await queue.cancel(tag)
        self._consuming = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """Decode, handle, then settle the delivery by the outcome."""
        self._in_flight += 1
        self._idle.clear()
        try:
            error: Exception | None = None
            try:
                await self._handler(from_message(message, self._max_body_bytes))
            except Exception as exc:
                error = exc
            try:
                await self._settle(message, error)
            except (*CONNECTION_EXCEPTIONS, ChannelInvalidStateError) as exc:
                log.warning(
                    "cannot settle message %s (%r); the broker will deliver it again",
                    message.message_id,
                    exc,
                )
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _settle(self, message: AbstractIncomingMessage, error: Exception | None) -> None:
        match disposition_for(error):
            case Disposition.ACK:
                await message.ack()
            case Disposition.PARK:
                assert error is not None
                log.warning(
                    "parking message %s from %s: %s", message.message_id, self._queue.name, error
                )
                await self._parker.send(
                    parked_message(message, self._queue.name, error),
                    DEAD_LETTER_EXCHANGE,
                    self._queue.name,
                )
                await message.ack()
                MESSAGES_PARKED.labels(self._queue.name).inc()
            case Disposition.REQUEUE:
                count = int(str((message.headers or {}).get("x-delivery-count") or 0))
                log.error(
                    "handler failed on message %s (delivery %d): %r",
                    message.message_id,
                    count + 1,
                    error,
                )
                # Jittered: the failures of one outage do not all come back at once.
                await asyncio.sleep(jittered(requeue_delay(count), 0.1))
                await message.nack(requeue=True)
