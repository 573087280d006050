"""The confirming publisher: persistent, mandatory, a bounded window of unconfirmed messages.

A publish returns once the broker confirmed it (basic.ack). Up to ``window``
publishes may await confirmation at once, so throughput is not one round trip
per message. Connection loss is retried until ``retry_for`` seconds have
passed: a lost confirmation may duplicate a message, which every consumer
tolerates because they dedupe by event id (DESIGN.md rule 2).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError
from aio_pika.exceptions import PublishError as ReturnedError

from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.backoff import Backoff
from dimsebus.services.bus.batch import Outgoing, PublishOutcome, publish_batch
from dimsebus.services.bus.codec import to_message
from dimsebus.services.bus.topology import EVENTS_EXCHANGE
from dimsebus.services.errors import EventNacked, PublishInterrupted, UnroutableEvent
from dimsebus.services.metrics import observe_publish

log = logging.getLogger(__name__)


class Publisher:
    """Publishes events to ``dimsebus.events`` (or any exchange) with confirms."""

    def __init__(
        self,
        channel: AbstractChannel,
        *,
        window: int = 256,
        retry_for: float = 30.0,
        confirm_timeout: float = 30.0,
        observe: Callable[[float], None] = observe_publish,
    ) -> None:
        self._channel = channel
        self._window = asyncio.Semaphore(window)
        self._retry_for = retry_for
        self._confirm_timeout = confirm_timeout
        self._exchanges: dict[str, AbstractExchange] = {}
        self._observe = observe

    async def publish(self, event: CloudEvent, exchange: str = EVENTS_EXCHANGE) -> None:
        """Publish ``event`` under its routing key and wait for the broker's confirm."""
        await self.send(to_message(event), exchange, event.routing_key)

    async def publish_all(
        self, events: Iterable[CloudEvent], exchange: str = EVENTS_EXCHANGE
    ) -> None:
        """Publish ``events`` concurrently within the window; raise the first failure."""
        async with asyncio.TaskGroup() as group:
            for event in events:
                group.create_task(self.publish(event, exchange))

    async def send(self, message: aio_pika.Message, exchange: str, routing_key: str) -> float:
        """Publish a ready message mandatory and confirmed, retrying lost connections.

        Returns the seconds the confirm took (of the last, successful try).
        """
        target = self._exchanges.get(exchange) or await self._exchange(exchange)
        backoff: Backoff | None = None  # made on the first failure: most sends have none
        async with self._window:
            while True:
                try:
                    started = time.monotonic()
                    await target.publish(
                        message, routing_key, mandatory=True, timeout=self._confirm_timeout
                    )
                    took = time.monotonic() - started
                    self._observe(took)
                    return took
                except ReturnedError as exc:
                    raise UnroutableEvent(
                        f"routing key {routing_key!r} on exchange {exchange!r} reaches no queue"
                    ) from exc
                except DeliveryError as exc:
                    raise EventNacked(
                        f"broker nacked message {message.message_id} to {exchange!r}"
                    ) from exc
                except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
                    backoff = backoff or Backoff(0.1, 5.0, budget=self._retry_for)
                    if backoff.exhausted:
                        raise PublishInterrupted(
                            f"message {message.message_id} to {exchange!r} unconfirmed after "
                            f"{self._retry_for:.0f} s: {exc!r}"
                        ) from exc
                    log.warning("publish of %s interrupted (%r); retrying", message.message_id, exc)
                    await backoff.wait()

    async def send_batch(
        self, messages: Sequence[Outgoing], exchange: str = EVENTS_EXCHANGE
    ) -> list[PublishOutcome]:
        """Publish ``messages`` in one write, mandatory and confirmed: one outcome each.

        Unlike ``send``, nothing is retried: a message cut off by the connection is
        ``PublishInterrupted``, for the caller to settle (see ``publish_batch``).
        """
        channel = await self._channel.get_underlay_channel()
        outcomes = await publish_batch(
            cast(aiormq.Channel, channel), exchange, messages, self._confirm_timeout
        )
        for outcome in outcomes:
            if isinstance(outcome, float):
                self._observe(outcome)
        return outcomes

    async def _exchange(self, name: str) -> AbstractExchange:
        self._exchanges[name] = await self._channel.get_exchange(name, ensure=False)
        return self._exchanges[name]
