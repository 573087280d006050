"""The node process: a pynetdicom AE serving its archive and capturing; a relay child publishes."""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, sop_class

from dimsebus.services.bus.connection import check_access
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.bus.relay import RelayProcess
from dimsebus.services.clock import sleep_unless
from dimsebus.services.console import run_service
from dimsebus.services.errors import ConfigError
from dimsebus.services.http import serving
from dimsebus.services.metrics import GaugeCollector, OutboxCollector
from dimsebus.services.node import server as edge
from dimsebus.services.node.archive import Archive
from dimsebus.services.node.capture_shell import Capture
from dimsebus.services.node.config import NodeSettings
from dimsebus.services.node.gate import Gate
from dimsebus.services.node.journal import MoveJournal
from dimsebus.services.node.mover import Mover, OpenMoves
from dimsebus.services.node.recovery import interrupted_events
from dimsebus.services.node.resend import Resender, serve_commands
from dimsebus.services.node.scp import ArchiveSCP
from dimsebus.services.node.tls import scp_context

log = logging.getLogger(__name__)

# pynetdicom generates its SOP class names at import time, so they are looked up by name.
QUERY_RETRIEVE: tuple[str, ...] = tuple(
    str(getattr(sop_class, f"{root}QueryRetrieveInformationModel{service}"))
    for root in ("PatientRoot", "StudyRoot")
    for service in ("Find", "Move", "Get")
)
VERIFICATION = str(sop_class.Verification)  # type: ignore[attr-defined]


def build_ae(settings: NodeSettings) -> AE:
    """The node's AE: Verification, Storage and Query/Retrieve SCP, with its timeouts."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.dimse_timeout = settings.dimse_timeout
    ae.acse_timeout = settings.acse_timeout
    ae.connection_timeout = settings.acse_timeout  # TCP connect and TLS handshake, outgoing
    ae.network_timeout = settings.network_timeout
    ae.maximum_associations = settings.max_associations
    ae.add_supported_context(VERIFICATION)
    for context in StoragePresentationContexts:
        # As Storage SCP, and as the SCP role of C-GET's C-STOREs on the requestor's side.
        ae.add_supported_context(
            str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES, scp_role=True, scu_role=True
        )
    for model in QUERY_RETRIEVE:
        ae.add_supported_context(model)
    return ae


@dataclass
class Node:
    """A running node: the AE's server threads, and the relay process beside it."""

    settings: NodeSettings
    outbox: Outbox
    archive: Archive
    capture: Capture
    journal: MoveJournal
    ae: AE | None = None

    @classmethod
    def open(cls, settings: NodeSettings) -> Node:
        """Open the outbox, its move journal and the archive; nothing listens yet."""
        outbox = Outbox(settings.outbox_path, dicom_path=True)
        return cls(
            settings,
            outbox,
            Archive(settings.archive_path),
            Capture.for_node(settings, outbox),
            MoveJournal(settings.outbox_path),
        )

    def recover(self) -> None:
        """Account for the C-MOVEs a crash cut off: their unanswered instances and end."""
        for move in self.journal.open_moves():
            events = interrupted_events(move, dict(self.settings.labels), self.capture.stamp)
            log.warning(
                "C-MOVE %s was cut off by a stop: %d of %d sub-operations unanswered",
                move.requested.data.operation.id,
                len(move.unanswered),
                len(move.matched),
            )
            self.capture.emit(*events)

    async def serve(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Serve DICOM and relay events until ``stop`` is set.

        A start that fails (the broker refuses the URL, the port is taken) raises
        ``ConfigError`` before the relay starts; whatever fails later stops the relay.
        """
        try:
            await check_access(self.settings.amqp_url, f"dimsebus-node-{self.settings.node_id}")
            self.recover()
            open_moves = OpenMoves()
            scp = ArchiveSCP(self.settings, self.archive, self.capture, self.journal, open_moves)
            gate = Gate(self.settings, self.capture)
            ae = self.ae = build_ae(self.settings)
            server = listen(
                ae,
                self.settings,
                [*self.capture.handlers(), *gate.handlers(), *scp.handlers()],
            )
        except BaseException:
            self.close()
            raise
        relay: RelayProcess | None = None
        try:
            relay = RelayProcess(
                self.settings.outbox_path,
                self.settings.amqp_url,
                name=f"dimsebus-node-{self.settings.node_id}",
                window=self.settings.publish_window,
                retention=self.settings.retention,
                replicas=self.settings.replicas,
            )
            await self._serve(stop, ready, relay, open_moves)
        finally:
            stop.set()
            server.shutdown()
            ae.shutdown()
            if relay is not None:
                await asyncio.to_thread(relay.wait_empty, 5.0)
                relay.stop()
            self.close()

    async def _serve(
        self,
        stop: asyncio.Event,
        ready: asyncio.Event | None,
        relay: RelayProcess,
        open_moves: OpenMoves,
    ) -> None:
        log.info(
            "node %s listening as %s on %s:%d; archive %d instances; outbox depth %d",
            self.settings.node_id,
            self.settings.ae_title,
            self.settings.host,
            self.settings.port,
            self.archive.count(),
            self.outbox.depth(),
        )
        commands = asyncio.create_task(
            serve_commands(
                Resender(self.settings, self.archive, self.capture),
                stop,
                Mover(self.settings, self.capture, open_moves),
            )
        )

        def health() -> dict[str, Any]:
            return {
                "ok": relay.alive,
                "relay_running": relay.alive,
                "outbox_depth": self.outbox.depth(),
            }

        collectors = [
            OutboxCollector(self.settings.outbox_path),
            GaugeCollector(
                {"dimsebus_archive_instances": ("Instances in the archive", self.archive.count)}
            ),
        ]
        try:
            async with serving(self.settings, collectors, health) as http_port:
                if http_port is not None:
                    log.info("metrics and health on port %d", http_port)
                if ready is not None:
                    ready.set()
                while not await sleep_unless(stop, 30):
                    log.info("outbox depth %d", self.outbox.depth())
                    # The relay checkpoints after its deletes; while it cannot publish,
                    # keep the WAL from growing without end, off the DICOM threads.
                    await asyncio.to_thread(self.outbox.checkpoint)
        finally:
            stop.set()
            await commands

    def close(self) -> None:
        """Close the move journal, the outbox and the archive."""
        self.journal.close()
        self.outbox.close()
        self.archive.close()


def listen(ae: AE, settings: NodeSettings, handlers: list[Any]) -> edge.EdgeServer:
    """Listen on the node's port, or raise ``ConfigError`` naming the port and why not."""
    try:
        return edge.start(ae, settings, handlers, ssl_context=scp_context(settings))
    except OSError as exc:
        where = f"port {settings.port} on {settings.host}"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"{where} is in use (another node, or another program)") from exc
        raise ConfigError(f"{where}: cannot listen ({exc.strerror or exc})") from exc


def run_node(settings: NodeSettings) -> None:
    """Run the node in the foreground until SIGINT or SIGTERM."""
    run_service(lambda stop: Node.open(settings).serve(stop))
