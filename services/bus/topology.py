"""The broker topology of DESIGN.md, declared idempotently by every service at start.

Argument tables are pure functions so that they can be checked without a
broker; ``declare_*`` are the thin aio-pika shell over them. Services call
``ensure_topology``: a broker user that may not configure the exchanges and the
log (the least-privilege users of ``scripts/rabbitmq-users``) checks that an
admin declared them instead.

Replication (``replicas``): on a cluster, the stream and each quorum queue are created
on ``replicas`` nodes (``x-initial-cluster-size``, ``x-quorum-initial-group-size``; both
are read when a queue is created and never after). Left unset, they are declared as
before and the broker chooses (RabbitMQ 3.10: a quorum queue on 3 nodes, or all if fewer;
the stream on every node). RabbitMQ compares these arguments on every redeclare and
refuses one that differs (PRECONDITION_FAILED, both ways), so a queue that exists with
another replica count (an upgraded deployment, a service configured otherwise) is
declared as it was created, with one warning: its members change only with
``rabbitmq-queues grow`` / ``rabbitmq-streams add_replica``, never by a redeclare.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from aiormq.exceptions import ChannelAccessRefused, ChannelNotFoundEntity, ChannelPreconditionFailed

from dimsebus.services.errors import TopologyError, TopologyNotAllowed

log = logging.getLogger(__name__)

EVENTS_EXCHANGE = "dimsebus.events"
REDELIVERIES_EXCHANGE = "dimsebus.redeliveries"
"""Events the log already holds, sent again to the work queues only (``redelivery``)."""
LOG_STREAM = "dimsebus.log"
DEAD_LETTER_EXCHANGE = "dimsebus.dlx"
COMMANDS_EXCHANGE = "dimsebus.commands"
DELAYS_EXCHANGE = "dimsebus.delays"
DELAY_HEADER = "x-dimsebus-delay-ms"
PARKING_SUFFIX = ".dead"
RESEND_COMMAND = "dimsebus.command.resend"
MOVE_COMMAND = "dimsebus.command.move"
STREAM_REPLICAS = "x-initial-cluster-size"
QUORUM_REPLICAS = "x-quorum-initial-group-size"
_INEQUIVALENT = re.compile(
    rf"inequivalent arg '({STREAM_REPLICAS}|{QUORUM_REPLICAS})'.* but current is "
    r"(none|the value '(\d+)'|'(\d+)')"
)


@dataclass(frozen=True, slots=True)
class StreamRetention:
    """How long and how much of the event log the broker keeps."""

    max_age: str = "30D"
    max_length_bytes: int = 20 * 1024**3
    max_segment_size_bytes: int = 100 * 1024**2


@dataclass(frozen=True, slots=True)
class WorkQueue:
    """A consumer service's quorum queue on ``dimsebus.events``.

    A work queue on ``dimsebus.events`` is bound with the same keys to
    ``dimsebus.redeliveries``, which no log is bound to. A relay whose publish was cut off
    before its confirm, and who then finds the event on the log, sends it again there: the
    broker may have written it to the log and not yet to every queue (a broker killed in
    between), and the log must not hold it twice. A queue that had it gets it twice, which
    its consumer, idempotent by event id (DESIGN.md rule 2), ignores.
    """

    name: str
    bindings: tuple[str, ...] = ("#",)
    delivery_limit: int = 5
    exchange: str = EVENTS_EXCHANGE

    @property
    def parking(self) -> str:
        """The queue where messages this consumer cannot handle are parked."""
        return self.name + PARKING_SUFFIX


def stream_arguments(
    retention: StreamRetention, replicas: int | None = None
) -> dict[str, str | int]:
    """Queue arguments of the event log stream, on ``replicas`` nodes if given."""
    return {
        "x-queue-type": "stream",
        "x-max-age": retention.max_age,
        "x-max-length-bytes": retention.max_length_bytes,
        "x-stream-max-segment-size-bytes": retention.max_segment_size_bytes,
        **_replicated(STREAM_REPLICAS, replicas),
    }


def work_queue_arguments(queue: WorkQueue, replicas: int | None = None) -> dict[str, str | int]:
    """Queue arguments of a consumer's quorum queue, dead-lettering to its parking queue."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": queue.name,
        "x-delivery-limit": queue.delivery_limit,
        **_replicated(QUORUM_REPLICAS, replicas),
    }


PARKING_ARGUMENTS: dict[str, str | int] = {"x-queue-type": "quorum"}


def parking_arguments(replicas: int | None = None) -> dict[str, str | int]:
    """Queue arguments of a parking queue (a quorum queue), on ``replicas`` nodes if given."""
    return {**PARKING_ARGUMENTS, **_replicated(QUORUM_REPLICAS, replicas)}


def _replicated(key: str, replicas: int | None) -> dict[str, str | int]:
    return {} if replicas is None else {key: replicas}


def existing_replicas(refusal: str) -> tuple[str, int | None] | None:
    """From a PRECONDITION_FAILED text: the replica argument that differed and the value the
    queue was created with (None: without it); None if another argument differed."""
    found = _INEQUIVALENT.search(refusal)
    if found is None:
        return None
    current = found.group(3) or found.group(4)
    return found.group(1), None if current is None else int(current)


def as_created(
    arguments: dict[str, str | int], key: str, value: int | None
) -> dict[str, str | int]:
    """``arguments`` with the replica argument ``key`` as the queue was created with it."""
    kept = {name: item for name, item in arguments.items() if name != key}
    return kept if value is None else {**kept, key: value}


def node_commands(node_id: str) -> WorkQueue:
    """The queue of commands to one node, bound by its id on ``dimsebus.commands``."""
    return WorkQueue(
        f"dimsebus.node.{node_id}",
        bindings=(f"{RESEND_COMMAND}.{node_id}", f"{MOVE_COMMAND}.{node_id}"),
        exchange=COMMANDS_EXCHANGE,
    )


def delay_queue(delay_ms: int) -> str:
    """The name of the queue that holds retries for one delay step."""
    return f"dimsebus.delay.{delay_ms}ms"


def delay_queue_arguments(replicas: int | None = None) -> dict[str, str | int]:
    """A delay step's queue: expired messages dead-letter to the commands exchange.

    Each message carries its own (jittered) expiration; it keeps its routing key,
    so ``dimsebus.commands`` routes it to the node it names. Quorum queues
    dead-letter at-least-once, so a retry is not lost between the two queues.
    """
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": COMMANDS_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        **_replicated(QUORUM_REPLICAS, replicas),
    }


EXCHANGES = (
    EVENTS_EXCHANGE,
    REDELIVERIES_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    COMMANDS_EXCHANGE,
    DELAYS_EXCHANGE,
)


async def declare_topology(
    channel: AbstractChannel,
    retention: StreamRetention = StreamRetention(),
    replicas: int | None = None,
) -> None:
    """Declare the exchanges and the event log stream (on ``replicas`` nodes); safe to repeat.

    Raises ``TopologyNotAllowed`` (and the broker closes ``channel``) for a user
    without configure permission on them.
    """
    try:
        events = await channel.declare_exchange(
            EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await channel.declare_exchange(
            REDELIVERIES_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await channel.declare_exchange(
            DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        await channel.declare_exchange(COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        await channel.declare_exchange(DELAYS_EXCHANGE, aio_pika.ExchangeType.HEADERS, durable=True)
        stream = await _declare_queue(channel, LOG_STREAM, stream_arguments(retention, replicas))
        await stream.bind(events, "#")
    except ChannelAccessRefused as exc:
        raise TopologyNotAllowed(
            f"this broker user may not declare the topology ({exc.args[0] if exc.args else exc}); "
            "an admin declares it once: `dimsebus topology declare` as dimsebus-admin"
        ) from exc


async def check_topology(channel: AbstractChannel) -> None:
    """Check passively (no permission needed) that the exchanges and the log exist."""
    try:
        for name in EXCHANGES:
            await channel.get_exchange(name, ensure=True)
        await channel.get_queue(LOG_STREAM, ensure=True)
    except ChannelNotFoundEntity as exc:
        raise TopologyError(
            f"{exc.args[0] if exc.args else exc}: the topology is not declared, and this "
            "broker user may not declare it; run `dimsebus topology declare` as dimsebus-admin"
        ) from exc


async def ensure_topology(
    connection: AbstractConnection,
    retention: StreamRetention = StreamRetention(),
    replicas: int | None = None,
) -> bool:
    """Declare the topology (True), or check that it exists if this user may not (False).

    Each try has a channel of its own: a refused declare closes its channel.
    """
    channel = await connection.channel()
    try:
        await declare_topology(channel, retention, replicas)
        return True
    except TopologyNotAllowed as exc:
        refused = exc
    finally:
        await _close_quietly(channel)
    channel = await connection.channel()
    try:
        await check_topology(channel)
    finally:
        await _close_quietly(channel)
    log.info("topology checked, not declared: %s", refused)
    return False


async def _close_quietly(channel: AbstractChannel) -> None:
    with contextlib.suppress(Exception):
        await channel.close()


async def declare_work_queue(
    channel: AbstractChannel, queue: WorkQueue, replicas: int | None = None
) -> AbstractQueue:
    """Declare ``queue`` and its parking queue (on ``replicas`` nodes), bound as the contract
    says."""
    source = await channel.get_exchange(queue.exchange, ensure=False)
    dlx = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
    parking = await _declare_queue(channel, queue.parking, parking_arguments(replicas))
    await parking.bind(dlx, queue.name)
    work = await _declare_queue(channel, queue.name, work_queue_arguments(queue, replicas))
    for key in queue.bindings:
        await work.bind(source, key)
    if queue.exchange == EVENTS_EXCHANGE:  # and the events sent again to the work queues alone
        redeliveries = await channel.get_exchange(REDELIVERIES_EXCHANGE, ensure=False)
        for key in queue.bindings:
            await work.bind(redeliveries, key)
    return work


async def declare_delay_queue(
    channel: AbstractChannel, delay_ms: int, replicas: int | None = None
) -> str:
    """Declare the queue of one delay step, bound on ``dimsebus.delays`` by its header."""
    delays = await channel.get_exchange(DELAYS_EXCHANGE, ensure=False)
    name = delay_queue(delay_ms)
    queue = await _declare_queue(channel, name, delay_queue_arguments(replicas))
    await queue.bind(delays, "", arguments={"x-match": "all", DELAY_HEADER: delay_ms})
    return name


async def _declare_queue(
    channel: AbstractChannel, name: str, arguments: dict[str, str | int]
) -> AbstractQueue:
    arguments = await _as_existing(channel, name, arguments)
    try:
        return await channel.declare_queue(name, durable=True, arguments=dict(arguments))
    except ChannelPreconditionFailed as exc:
        raise TopologyError(
            f"queue {name!r} exists with other arguments than {arguments}: {exc}. "
            "Change retention or limits of an existing queue with a RabbitMQ policy "
            "(rabbitmqctl set_policy), not by redeclaring it."
        ) from exc


async def _as_existing(
    channel: AbstractChannel, name: str, arguments: dict[str, str | int]
) -> dict[str, str | int]:
    """``arguments``, with the replica count the queue ``name`` was created with if it exists
    with another: tried on a channel of its own, for a refused declare closes its channel."""
    underlay = await channel.get_underlay_channel()
    probe = await underlay.connection.channel()
    try:
        await probe.queue_declare(name, durable=True, arguments=dict(arguments))
        return arguments
    except ChannelPreconditionFailed as exc:
        found = existing_replicas(str(exc))
        if found is None:
            return arguments  # another argument differs: the declare proper says which
        key, created = found
        log.warning(
            "queue %r exists with %s, not the %s asked for: it keeps its replicas "
            "(rabbitmq-queues grow / rabbitmq-streams add_replica change them)",
            name,
            f"{key} {created}" if created is not None else f"no {key}",
            arguments.get(key, "broker default"),
            extra={"queue": name, "argument": key, "created_with": created},
        )
        return as_created(arguments, key, created)
    finally:
        if not probe.is_closed:
            await probe.close()
