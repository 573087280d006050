"""The node's side of retries: resend commands in, failed instances sent again.

Commands come from the node's queue ``dimsebus.node.<node-id>``. A C-MOVE's
instances are sent again from the archive to the same destination (a C-MOVE the
node itself requested from a remote archive, a resend with ``source``, is asked
of that archive again by the Mover, at IMAGE level), a
``dimsebus send`` job's from the same files to the same peer, each with its
``attempt`` and the original operation and move originator, so that the
tracker folds the results into the same move. Commands that arrive together
are coalesced: one association per (operation, destination). A command id
that the node already executed is skipped, so a redelivered command does not
send twice. If no association can be had, ``dicom.cstore.unsent`` says why,
and the retrier decides again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from aio_pika.abc import AbstractConnection

from dimsebus.schemas import events as ev
from dimsebus.services.bus.connection import confirming_channel
from dimsebus.services.bus.consumer import Consumer
from dimsebus.services.bus.session import consume_until, supervised
from dimsebus.services.bus.topology import ensure_topology, node_commands
from dimsebus.services.clock import sleep_unless
from dimsebus.services.errors import Unprocessable
from dimsebus.services.metrics import RESEND_COMMANDS
from dimsebus.services.node.archive import Archive
from dimsebus.services.node.capture_shell import Capture
from dimsebus.services.node.config import NodeSettings
from dimsebus.services.node.jobs import Job
from dimsebus.services.node.mover import Mover
from dimsebus.services.node.sender import SendError, Target, emit_unsent, send_files

log = logging.getLogger(__name__)


@dataclass
class ResendGroup:
    """Instances of one operation to send again to one destination, on one association."""

    operation: ev.Operation
    destination_ae_title: str
    move_originator: ev.MoveOriginator | None
    labels: dict[str, str]
    attempts: dict[str, int] = field(default_factory=dict)
    command_ids: list[UUID] = field(default_factory=list)


def group_commands(commands: list[ev.ResendSubOperations]) -> list[ResendGroup]:
    """Coalesce commands by (operation, destination); an instance named twice keeps its
    highest attempt."""
    groups: dict[tuple[UUID, str], ResendGroup] = {}
    for command in commands:
        data = command.data
        key = (data.operation.id, data.destination_ae_title)
        group = groups.get(key)
        if group is None:
            group = groups[key] = ResendGroup(
                data.operation, data.destination_ae_title, data.move_originator, dict(data.labels)
            )
        for uid in data.sop_instance_uids:
            group.attempts[uid] = max(group.attempts.get(uid, 0), data.attempt)
        group.command_ids.append(command.id)
    return list(groups.values())


class Resender:
    """Runs resend commands on a worker thread, a coalesced batch at a time."""

    def __init__(
        self, settings: NodeSettings, archive: Archive, capture_: Capture, coalesce: float = 0.2
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.capture = capture_
        self.coalesce = coalesce
        self._waiting: list[tuple[ev.ResendSubOperations, asyncio.Future[None]]] = []
        self._running: dict[UUID, asyncio.Future[None]] = {}

    async def handle(self, event: ev.Event) -> None:
        """Queue a command and return once its instances were sent (or found unsendable)."""
        if not isinstance(event, ev.ResendSubOperations):
            raise Unprocessable(f"a node takes dimsebus.command.resend, not {event.type}")
        if event.data.node_id != self.settings.node_id:
            raise Unprocessable(
                f"command for node {event.data.node_id!r} reached node {self.settings.node_id!r}"
            )
        if event.data.source is not None:  # serve_commands hands these to the Mover
            raise Unprocessable(
                f"resend {event.id} re-issues a C-MOVE from {event.data.source.ae_title}; "
                "this node runs no Move SCU"
            )
        if event.id in self._running:
            return await asyncio.shield(self._running[event.id])
        if not self.archive.claim_command(str(event.id)):
            log.info("resend command %s was already executed; skipped", event.id)
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[event.id] = done
        self._waiting.append((event, done))
        try:
            await asyncio.shield(done)
        finally:
            self._running.pop(event.id, None)
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Execute waiting commands until ``stop``."""
        while not stop.is_set():
            if not self._waiting:
                await sleep_unless(stop, 0.05)
                continue
            await asyncio.sleep(self.coalesce)
            batch, self._waiting = self._waiting, []
            futures = {command.id: future for command, future in batch}
            for group in group_commands([command for command, _ in batch]):
                try:
                    await asyncio.to_thread(self.resend, group)
                except Exception as exc:
                    log.exception("resend of %s failed", group.operation.id)
                    for command_id in group.command_ids:
                        futures[command_id].set_exception(exc)
                    continue
                for command_id in group.command_ids:
                    self.archive.command_done(str(command_id))
                    futures[command_id].set_result(None)
                RESEND_COMMANDS.inc(len(group.command_ids))

    def resend(self, group: ResendGroup) -> None:
        """Send one group's instances on one association (blocking: a worker thread)."""
        found = self._locate(group)
        if found is None:
            return
        target, files = found
        missing = [uid for uid in group.attempts if uid not in files or not files[uid].exists()]
        if missing:
            self._unsent(group, missing, "not_found", "no longer in the archive or on disk")
        present = [uid for uid in group.attempts if uid not in missing]
        if not present:
            return
        job = Job(
            group.operation,
            group.move_originator,
            labels=group.labels,
            attempts={uid: group.attempts[uid] for uid in present},
        )
        log.info(
            "re-sending %d instance(s) of %s %s to %s",
            len(present),
            group.operation.kind,
            group.operation.id,
            group.destination_ae_title,
        )
        try:
            send_files(
                self.settings, self.capture, target, [files[uid] for uid in present], job=job
            )
        except SendError as exc:  # send_files reported the instances it never requested
            log.warning("resend of %s to %s: %s", group.operation.id, target.ae_title, exc)

    def _locate(self, group: ResendGroup) -> tuple[Target, dict[str, Path]] | None:
        operation, destination = group.operation, group.destination_ae_title
        uids = list(group.attempts)
        if operation.kind == "move":
            known = self.settings.destinations.get(destination)
            if known is None:
                detail = f"{destination!r} is not among this node's destinations"
                self._unsent(group, uids, "unknown_destination", detail)
                return None
            files = {i.sop_instance_uid: i.path for i in self.archive.by_uids(uids)}
            return Target(destination, known.host, known.port, known.tls), files
        if operation.kind == "store":
            job = self.archive.send_job(str(operation.id))
            if job is None:
                self._unsent(group, uids, "not_found", "this node has no record of the send job")
                return None
            (ae_title, host, port), files = job
            return Target(ae_title, host, port, self._speaks_tls(host, port)), files
        raise Unprocessable("C-GET sub-operations cannot be re-sent by the node")

    def _speaks_tls(self, host: str, port: int) -> bool:
        """Whether a send job's peer is a destination with ``tls = true`` (same host and port).

        The archive records a send job's peer without whether it spoke TLS; a job sent
        with ``--tls`` elsewhere is re-sent in plain TCP, which its TLS port refuses
        before any data set leaves (an ``unsent`` event, not a leak).
        """
        destinations = self.settings.destinations.values()
        return any(d.tls and (d.host, d.port) == (host, port) for d in destinations)

    def _unsent(
        self, group: ResendGroup, uids: list[str], reason: ev.UnsentReason, detail: str
    ) -> None:
        job = Job(group.operation, group.move_originator, group.labels, dict(group.attempts))
        emit_unsent(self.capture, job, group.destination_ae_title, uids, reason, detail)


async def serve_commands(
    resender: Resender, stop: asyncio.Event, mover: Mover | None = None
) -> None:
    """Consume the node's command queue until ``stop``; waits for a broker that is down.

    Resend commands go to ``resender``, move commands (``dimsebus.command.move``) to
    ``mover``.
    """
    settings = resender.settings
    worker = asyncio.create_task(resender.run(stop))

    async def handle(event: ev.Event) -> None:
        if mover is not None and isinstance(event, ev.MoveCommand):
            return await mover.handle(event, resender.archive)
        if mover is not None and isinstance(event, ev.ResendSubOperations) and event.data.source:
            return await mover.reissue(event, resender.archive)  # a pull: ask the archive again
        return await resender.handle(event)

    async def session(connection: AbstractConnection, stop: asyncio.Event) -> None:
        await ensure_topology(connection, settings.retention, settings.replicas)
        channel = await confirming_channel(connection)
        queue = node_commands(settings.node_id)
        consumer = Consumer(
            channel,
            queue,
            handle,
            prefetch=settings.prefetch,
            max_body_bytes=settings.max_body_bytes,
            replicas=settings.replicas,
        )
        announce = f"node {settings.node_id} takes commands from {queue.name}"
        await consume_until(consumer, stop, asyncio.Event(), announce)

    try:
        await supervised(
            settings.amqp_url, f"dimsebus-node-{settings.node_id}-commands", session, stop
        )
    finally:
        await worker
