"""The broker topology of DESIGN.md, declared idempotently by every service at start.

Argument tables are pure functions so that they can be checked without a
broker; ``declare_*`` are the thin aio-pika shell over them.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue
from aiormq.exceptions import ChannelPreconditionFailed

from services.errors import TopologyError

EVENTS_EXCHANGE = "dimsebus.events"
LOG_STREAM = "dimsebus.log"
DEAD_LETTER_EXCHANGE = "dimsebus.dlx"
COMMANDS_EXCHANGE = "dimsebus.commands"
PARKING_SUFFIX = ".dead"


@dataclass(frozen=True, slots=True)
class StreamRetention:
    """How long and how much of the event log the broker keeps."""

    max_age: str = "30D"
    max_length_bytes: int = 20 * 1024**3
    max_segment_size_bytes: int = 100 * 1024**2


@dataclass(frozen=True, slots=True)
class WorkQueue:
    """A consumer service's quorum queue on ``dimsebus.events``."""

    name: str
    bindings: tuple[str, ...] = ("#",)
    delivery_limit: int = 5

    @property
    def parking(self) -> str:
        """The queue where messages this consumer cannot handle are parked."""
        return self.name + PARKING_SUFFIX


def stream_arguments(retention: StreamRetention) -> dict[str, str | int]:
    """Queue arguments of the event log stream."""
    return {
        "x-queue-type": "stream",
        "x-max-age": retention.max_age,
        "x-max-length-bytes": retention.max_length_bytes,
        "x-stream-max-segment-size-bytes": retention.max_segment_size_bytes,
    }


def work_queue_arguments(queue: WorkQueue) -> dict[str, str | int]:
    """Queue arguments of a consumer's quorum queue, dead-lettering to its parking queue."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": queue.name,
        "x-delivery-limit": queue.delivery_limit,
    }


PARKING_ARGUMENTS: dict[str, str | int] = {"x-queue-type": "quorum"}


async def declare_topology(
    channel: AbstractChannel, retention: StreamRetention = StreamRetention()
) -> None:
    """Declare the exchanges and the event log stream; safe to repeat."""
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    await channel.declare_exchange(COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    log = await _declare_queue(channel, LOG_STREAM, stream_arguments(retention))
    await log.bind(events, "#")


async def declare_work_queue(channel: AbstractChannel, queue: WorkQueue) -> AbstractQueue:
    """Declare ``queue`` and its parking queue, bound as the contract says."""
    events = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
    dlx = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
    parking = await _declare_queue(channel, queue.parking, PARKING_ARGUMENTS)
    await parking.bind(dlx, queue.name)
    work = await _declare_queue(channel, queue.name, work_queue_arguments(queue))
    for key in queue.bindings:
        await work.bind(events, key)
    return work


async def _declare_queue(
    channel: AbstractChannel, name: str, arguments: dict[str, str | int]
) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True, arguments=dict(arguments))
    except ChannelPreconditionFailed as exc:
        raise TopologyError(
            f"queue {name!r} exists with other arguments than {arguments}: {exc}. "
            "Change retention or limits of an existing queue with a RabbitMQ policy "
            "(rabbitmqctl set_policy), not by redeclaring it."
        ) from exc
