"""The retrier's shell: failure events in, decisions out, delays held by RabbitMQ.

It consumes the node's own failure events from the quorum queue
``dimsebus.retrier`` (not the tracker's derived events): each one carries
everything a resend needs, the decision does not wait for the tracker, and
``dimsebus send`` jobs, which the tracker does not follow, are retried too.

A retry is a ``dimsebus.command.resend`` published to ``dimsebus.delays``;
the delay step's quorum queue holds it until its expiration, then
dead-letters it to ``dimsebus.commands``, which routes it to the node's
queue. Nothing sleeps in this process, so waiting retries survive restarts
of the retrier and of the node.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from dimsebus.schemas import events as ev
from dimsebus.services.bus.codec import to_message
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.consumer import Consumer
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.session import consume_until, serve_supervised
from dimsebus.services.bus.topology import (
    DELAY_HEADER,
    DELAYS_EXCHANGE,
    WorkQueue,
    declare_delay_queue,
    declare_work_queue,
    ensure_topology,
    node_commands,
)
from dimsebus.services.clock import utc_now
from dimsebus.services.http import serving
from dimsebus.services.metrics import RETRIES
from dimsebus.services.resends import send_commands
from dimsebus.services.retrier.decisions import RetryItem, decision_event, record, requeued
from dimsebus.services.retrier.policy import RetryPolicy, decide, decision_id, failure_of
from dimsebus.services.retrier.ports import DecisionOutlet, DecisionStore
from dimsebus.services.retrier.store import RetryStore
from dimsebus.services.settings import ServiceSettings

log = logging.getLogger(__name__)

RETRIER_QUEUE = WorkQueue(
    "dimsebus.retrier",
    bindings=(
        "dicom.cstore.response.received.failure",
        "dicom.cstore.response.received.warning",
        "dicom.cstore.response.missing.#",
        "dicom.cstore.unsent.#",
        # The node's own C-MOVEs (Move SCU): a final response's failed instances. Pending
        # responses (.pending) and cancelled moves (.cancel) are not decided about.
        "dicom.move.response.received.success",
        "dicom.move.response.received.warning",
        "dicom.move.response.received.failure",
        # A person's requeue on the tracker's web page (ui_actions): run here, by requeue().
        "dimsebus.action.requested.requeue",
    ),
)


class RetrierSettings(ServiceSettings):
    """``dimsebus retrier`` and ``dimsebus retries``: TOML ``[policy]``, DIMSEBUS_POLICY__*."""

    model_config = SettingsConfigDict(
        env_prefix="DIMSEBUS_", extra="forbid", env_nested_delimiter="__"
    )

    db: Path | str = Field(
        Path("var/retrier.sqlite"),
        description="the retrier's decisions: an SQLite file, or a postgresql:// URL that "
        "several retriers share",
    )
    retrier_id: str = Field("retrier", pattern=r"^[A-Za-z0-9_.-]+$")
    claim_lease: float = Field(
        30.0,
        gt=0,
        description="seconds a retrier that claimed a decision has to publish it before "
        "another one may (it died in between)",
    )
    policy: RetryPolicy = Field(default_factory=RetryPolicy)


class Retrier:
    """Decides once per failure, then publishes the decision and schedules the resend."""

    def __init__(
        self,
        settings: RetrierSettings,
        store: DecisionStore,
        outlet: DecisionOutlet,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.store = store
        self.outlet = outlet
        self.source = f"dimsebus://retrier/{settings.retrier_id}"
        # Claims are this process's, whatever its retrier_id: two copies may share one.
        self.holder = f"{settings.retrier_id}/{uuid.uuid4()}"
        self._draw = draw
        self._clock = clock

    async def handle(self, event: ev.Event) -> None:
        """Decide about a failure event; a decision already published is not repeated.

        The store is SQLite (or PostgreSQL): its calls run in a worker thread, off
        the event loop that carries the consumer's deliveries and heartbeats.
        """
        failure = failure_of(event, self.settings.policy)
        if failure is None:
            return
        item_id = decision_id(failure)
        item = await asyncio.to_thread(self.store.get, item_id)
        if item is None:
            now = self._clock()
            decision = decide(failure, failure.attempt, self.settings.policy, now, self._draw())
            decided = record(failure, decision, item_id, self.source, now)
            item = await asyncio.to_thread(self.store.add, decided)
        if not await self._claimed(item):
            log.info(
                "decision %s was already published; event %s changes nothing", item.id, event.id
            )
            return
        try:
            await self.publish(item)
        except BaseException:
            # Not published: the next delivery (here or on another retrier) may claim it now.
            await asyncio.shield(asyncio.to_thread(self.store.release, item.id, self.holder))
            raise
        await asyncio.to_thread(self.store.mark_published, item.id)
        RETRIES.labels("scheduled" if item.state == "scheduled" else "exhausted").inc()
        log.info(
            "%s %d instance(s) of %s %s: %s",
            "retry" if item.state == "scheduled" else "gave up on",
            len(item.data.sop_instance_uids),
            item.data.operation.kind,
            item.data.operation.id,
            f"attempt {item.data.attempt} at {item.retry_at}"
            if item.state == "scheduled"
            else item.reason,
        )

    async def _claimed(self, item: RetryItem) -> bool:
        """Claim ``item`` to publish it (True), or see it published by anyone (False).

        Another retrier's claim is waited out: it publishes, or its lease runs out."""
        lease = dt.timedelta(seconds=self.settings.claim_lease)
        while True:
            if item.published:
                return False
            if await asyncio.to_thread(
                self.store.claim, item.id, self.holder, self._clock(), lease
            ):
                return True
            await asyncio.sleep(0.1)
            found = await asyncio.to_thread(self.store.get, item.id)
            assert found is not None
            item = found

    async def publish(self, item: RetryItem) -> None:
        """The decision's event, then (for a retry) the delayed command."""
        await self.outlet.announce(decision_event(item, self.source), item.data.node_id)
        if item.state == "scheduled":
            assert item.retry_at is not None
            assert item.step_ms is not None
            delay = max(item.retry_at - self._clock(), dt.timedelta(0))
            await self.outlet.schedule(item.command, item.step_ms, delay)


class BrokerOutlet:
    """Decisions to RabbitMQ: events to ``dimsebus.events``, resends to ``dimsebus.delays``."""

    def __init__(self, channel: AbstractChannel, window: int, replicas: int | None = None) -> None:
        self._channel = channel
        self._replicas = replicas
        self._publisher = Publisher(channel, window=window)
        self._node_queues: set[str] = set()
        self._delay_queues: set[int] = set()

    async def announce(self, event: ev.RetryScheduled | ev.RetryExhausted, node_id: str) -> None:
        """Declare the node's command queue (a command waits there while the node is down),
        then publish the event."""
        if node_id not in self._node_queues:
            await declare_work_queue(self._channel, node_commands(node_id), self._replicas)
            self._node_queues.add(node_id)
        await self._publisher.publish(event)

    async def schedule(
        self, command: ev.ResendSubOperations, step_ms: int, delay: dt.timedelta
    ) -> None:
        """The delay step's queue holds the command until it expires, then dead-letters it
        to ``dimsebus.commands``."""
        if step_ms not in self._delay_queues:
            await declare_delay_queue(self._channel, step_ms, self._replicas)
            self._delay_queues.add(step_ms)
        message = to_message(command)
        message.headers = {DELAY_HEADER: step_ms}
        message.expiration = delay
        await self._publisher.send(message, DELAYS_EXCHANGE, command.routing_key)


async def run_retrier(
    settings: RetrierSettings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    """Consume failure events until ``stop``; a lost connection starts the session over."""
    store = await asyncio.to_thread(RetryStore, settings.db)  # opening it migrates it
    connected = asyncio.Event()

    async def session(connection: AbstractConnection, stop: asyncio.Event) -> None:
        await ensure_topology(connection, settings.retention, settings.replicas)
        channel = await confirming_channel(connection)
        retrier = Retrier(
            settings, store, BrokerOutlet(channel, settings.publish_window, settings.replicas)
        )

        async def handle(event: ev.Event) -> None:
            if isinstance(event, ev.ActionRequested):
                await requeue_asked(settings, store, event)
            else:
                await retrier.handle(event)

        consumer = Consumer(
            channel,
            RETRIER_QUEUE,
            handle,
            prefetch=settings.prefetch,
            max_body_bytes=settings.max_body_bytes,
            replicas=settings.replicas,
        )
        policy = settings.policy.model_dump()
        announce = f"retrier {settings.retrier_id} consuming {RETRIER_QUEUE.name}; policy {policy}"
        await consume_until(consumer, stop, connected, announce)

    def health() -> dict[str, Any]:
        return {"ok": connected.is_set(), "broker_connected": connected.is_set()}

    try:
        async with serving(settings, [], health):
            name = f"dimsebus-{settings.retrier_id}"
            await serve_supervised(settings.amqp_url, name, session, stop, connected, ready)
    finally:
        store.close()


async def requeue(settings: RetrierSettings, store: RetryStore, items: list[RetryItem]) -> int:
    """Send parked decisions' commands now, as an operator asked; how many were sent."""
    source = f"dimsebus://retrier/{settings.retrier_id}"
    commands = [requeued(item, source, utc_now()) for item in items]
    await send_commands(settings, commands)
    for item in items:
        await asyncio.to_thread(store.set_state, item.id, "requeued")
    return len(commands)


async def requeue_asked(
    settings: RetrierSettings, store: RetryStore, event: ev.ActionRequested
) -> int:
    """A person's requeue of one move's parked items (the tracker's web page): ``requeue``,
    as ``dimsebus retries requeue`` runs it. A redelivery finds them requeued already."""
    if event.data.action != "requeue":
        return 0
    move, node_id = event.data.operation.id, event.data.node_id
    parked = await asyncio.to_thread(store.items, ("parked",))
    items = [i for i in parked if i.data.operation.id == move and i.data.node_id == node_id]
    sent = await requeue(settings, store, items) if items else 0
    log.info(
        "requeued %d parked item(s) of move %s, as asked on the web page (session %s)",
        sent,
        move,
        event.data.session,
    )
    return sent


async def purge_delays(settings: RetrierSettings, steps: set[int]) -> int:
    """Drop every waiting retry from the delay queues of ``steps``; how many were dropped."""
    connection = await connect(settings.amqp_url, "dimsebus-retries-cli")
    dropped = 0
    async with connection:
        channel = await connection.channel()
        for step in sorted(steps):
            queue_name = await declare_delay_queue(channel, step, settings.replicas)
            queue = await channel.get_queue(queue_name, ensure=False)
            result = await queue.purge()
            dropped += int(getattr(result, "message_count", 0) or 0)
    return dropped
