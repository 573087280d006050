"""The audit service's shell: every event into the chained store, audit messages to syslog.

``dimsebus audit`` consumes its own quorum queue ``dimsebus.audit`` (bound to
``#`` on ``dimsebus.events``), one event at a time in queue order, so the
chain follows the order the events were published in. Each event is
appended (skipped if its id is known), then the DICOM audit messages it
completes are built and spooled in the same store; a sender task delivers
the spool to the Audit Record Repository over TCP, or TLS (RFC 5425), and
keeps what the collector could not take for the next attempt.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aio_pika.abc import AbstractConnection
from pydantic import Field, model_validator

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.audit.messages import (
    AuditMessage,
    PatientPolicy,
    Sent,
    access_alert,
    begin_transferring,
    by_study,
    instances_transferred,
    security_alert,
    syslog_frame,
)
from dimsebus.services.audit.store import AuditStore
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.consumer import Consumer
from dimsebus.services.bus.log import open_log
from dimsebus.services.bus.session import consume_until, serve_supervised
from dimsebus.services.bus.topology import WorkQueue, declare_work_queue, ensure_topology
from dimsebus.services.clock import sleep_unless, utc_now
from dimsebus.services.http import serving
from dimsebus.services.leadership import leadership_for, while_active
from dimsebus.services.metrics import AUDIT_RECORDS, AUDIT_SENT, GaugeCollector
from dimsebus.services.settings import LogSettings
from dimsebus.services.sql import Fence, masked_url

log = logging.getLogger(__name__)
AUDIT_QUEUE = WorkQueue("dimsebus.audit", bindings=("#",))


class AuditSettings(LogSettings):
    """``dimsebus audit``: the store, and the Audit Record Repository (syslog collector)."""

    db: str = Field("var/audit.sqlite", description="SQLite file, or a postgresql:// URL")
    audit_source: str = Field("dimsebus", description="AuditSourceID of the messages")
    syslog_host: str | None = Field(None, description="the collector; none: messages stay spooled")
    syslog_port: int = Field(6514, ge=1, le=65535)
    syslog_tls: bool = Field(False, description="RFC 5425 syslog over TLS")
    syslog_ca_file: Path | None = Field(None, description="CA bundle that signed the collector")
    syslog_cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    syslog_key_file: Path | None = None
    patient_id: PatientPolicy = Field(
        "keep", description="put the Patient ID the node let out (hashed by default) in messages"
    )
    retry_after: float = Field(5.0, gt=0, description="seconds between delivery attempts")

    @model_validator(mode="after")
    def _tls_files_exist(self) -> AuditSettings:
        for name in ("syslog_ca_file", "syslog_cert_file", "syslog_key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {str(path)!r} is not a readable file")
        return self


class Auditor:
    """Appends events and spools the audit messages they complete."""

    def __init__(self, settings: AuditSettings, store: AuditStore) -> None:
        self.settings = settings
        self.store = store
        self.hostname = socket.gethostname()
        self._lock = asyncio.Lock()

    async def handle(self, event: ev.Event) -> None:
        """Record one event (idempotently), then spool its audit messages."""
        async with self._lock:  # the chain is linear: one event at a time, in arrival order
            await asyncio.to_thread(self.record, [event])

    def record(self, events: list[CloudEvent]) -> int:
        """Append events and spool their messages; how many records were new."""
        added = self.store.append(events)
        AUDIT_RECORDS.inc(len(added))
        messages = [message for event in events for message in self.messages_for(event)]
        if messages:
            self.store.spool(
                [(str(m.id), m.kind, m.time, syslog_frame(m, self.hostname)) for m in messages]
            )
        return len(added)

    def messages_for(self, event: CloudEvent) -> list[AuditMessage]:
        """The audit messages that ``event`` completes (built again on a replay: same ids)."""
        source, policy = self.settings.audit_source, self.settings.patient_id
        match event:
            case ev.AccessRefused():
                return [access_alert(event, source)]
            case ev.AssociationRejected() if not _refused_by_access(event):
                return [security_alert(event, source)]
            case ev.CStoreResponseReceived() | ev.CStoreResponseMissing():
                this = Sent.of(event)
                first = this and self.store.first_of(str(this.association.id), this.study_uid)
                if this is None or first != str(event.id):
                    return []
                return [begin_transferring(this, source, policy)]
            case ev.AssociationReleased() | ev.AssociationAborted():
                groups = by_study(self._association_sent(str(event.data.association.id)))
                return [instances_transferred(g, event.data.at, source, policy) for g in groups]
        return []

    def _association_sent(self, association_id: str) -> Iterator[Sent]:
        """The association's sub-operations one at a time (``by_study`` keeps counts only)."""
        for body in self.store.association_events(association_id):
            event = ev.MESSAGE_ADAPTER.validate_python(body)
            if isinstance(event, ev.CStoreResponseReceived | ev.CStoreResponseMissing):
                sent = Sent.of(event)
                if sent is not None:
                    yield sent


async def run_audit(
    settings: AuditSettings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    """Consume every event until ``stop``, delivering audit messages as the collector allows.

    On a PostgreSQL store shared with other audit services, only the one holding the lock
    (``dimsebus.services.leadership``) consumes and delivers: one writer of the chain.
    """
    store = await asyncio.to_thread(AuditStore.open, settings.db)
    auditor = Auditor(settings, store)
    connected = asyncio.Event()
    leadership = leadership_for(settings.db, "audit", "audit")

    def role() -> str:
        return "active" if leadership is None or leadership.active else "standby"

    async def session(connection: AbstractConnection, stop: asyncio.Event) -> None:
        await ensure_topology(connection, settings.retention, settings.replicas)
        channel = await confirming_channel(connection)
        if await asyncio.to_thread(store.count) == 0:
            # A first start: events published before the audit queue existed are only
            # on the log. The queue is declared first, so nothing falls between the two.
            await declare_work_queue(channel, AUDIT_QUEUE, settings.replicas)
            read, added = await replay_into(auditor, connection)
            log.info("audit caught up with the log: %d read, %d recorded", read, added)
        consumer = Consumer(
            channel,
            AUDIT_QUEUE,
            auditor.handle,
            prefetch=settings.prefetch,
            max_body_bytes=settings.max_body_bytes,
            replicas=settings.replicas,
        )
        announce = f"audit consuming {AUDIT_QUEUE.name} into {masked_url(settings.db)}"
        await consume_until(consumer, stop, connected, announce)

    async def term(term_stop: asyncio.Event, fence: Fence | None) -> None:
        store.db.fence = fence
        sender = asyncio.create_task(deliver(settings, store, term_stop))
        try:
            await serve_supervised(
                settings.amqp_url, "dimsebus-audit", session, term_stop, connected, ready
            )
        finally:
            term_stop.set()
            await sender
            store.db.fence = None

    def health() -> dict[str, Any]:
        if role() == "standby":
            return {"ok": True, "role": "standby", "broker_connected": False}
        return {"ok": connected.is_set(), "broker_connected": connected.is_set(), "role": "active"}

    gauges = GaugeCollector(
        {
            "dimsebus_audit_spool_depth": ("Audit messages not yet sent", store.spool_depth),
            "dimsebus_audit_active": (
                "1 while this audit service is the active one, 0 while it stands by",
                lambda: float(role() == "active"),
            ),
        }
    )
    try:
        async with serving(settings, [gauges], health):
            await while_active(leadership, stop, term)
    finally:
        stop.set()
        store.close()


async def deliver(settings: AuditSettings, store: AuditStore, stop: asyncio.Event) -> None:
    """Send the spool to the collector until ``stop``; what fails stays for the next try."""
    if settings.syslog_host is None:
        return
    while not stop.is_set():
        pending = await asyncio.to_thread(store.pending)
        if not pending:
            await sleep_unless(stop, 0.5)
            continue
        try:
            await _send(settings, pending)
        except (OSError, ssl.SSLError) as exc:
            log.warning(
                "syslog collector %s:%d unreachable (%r); %d message(s) stay spooled",
                settings.syslog_host,
                settings.syslog_port,
                exc,
                await asyncio.to_thread(store.spool_depth),
            )
            await sleep_unless(stop, settings.retry_after)
            continue
        await asyncio.to_thread(store.mark_sent, [mid for mid, _ in pending], utc_now())
        AUDIT_SENT.inc(len(pending))


async def _send(settings: AuditSettings, pending: list[tuple[str, bytes]]) -> None:
    """One connection, every frame, then a clean close (the collector has read them all)."""
    assert settings.syslog_host is not None
    context = _tls_context(settings) if settings.syslog_tls else None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(settings.syslog_host, settings.syslog_port, ssl=context), 10
    )
    try:
        for _, frame in pending:
            writer.write(frame)
        await asyncio.wait_for(writer.drain(), 10)
        if context is None:
            # Half-close: the collector closes its side once it has read every frame.
            writer.write_eof()
            await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


def _tls_context(settings: AuditSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(settings.syslog_ca_file) if settings.syslog_ca_file else None
    )
    if settings.syslog_cert_file is not None:
        context.load_cert_chain(
            str(settings.syslog_cert_file),
            str(settings.syslog_key_file) if settings.syslog_key_file else None,
        )
    return context


async def replay(settings: AuditSettings, start: str | int = "first") -> tuple[int, int]:
    """Append every event of the log from ``start`` that the trail lacks: (read, added)."""
    store = await asyncio.to_thread(AuditStore.open, settings.db)
    try:
        connection = await connect(settings.amqp_url, "dimsebus-audit-replay")
        async with connection:
            return await replay_into(Auditor(settings, store), connection, start)
    finally:
        store.close()


async def replay_into(
    auditor: Auditor, connection: AbstractConnection, start: str | int = "first"
) -> tuple[int, int]:
    """Record what the log holds from ``start`` and the trail lacks: (read, added)."""
    read = added = 0
    name = "dimsebus-audit-replay"
    async with open_log(connection, start, auditor.settings, name=name) as reader:
        batch: list[Any] = []
        async for entry in reader.until_idle():
            read += 1
            if entry.event is not None:
                batch.append(entry.event)
            else:
                log.warning(
                    "skipping log entry %d (%s): %s", entry.offset, entry.routing_key, entry.error
                )
            if len(batch) >= 500:
                added += await asyncio.to_thread(auditor.record, batch)
                batch = []
        if batch:
            added += await asyncio.to_thread(auditor.record, batch)
    return read, added


def parse_time(text: str) -> dt.datetime:
    """A --since/--until value: ISO 8601; without a zone it is UTC."""
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _refused_by_access(event: ev.AssociationRejected) -> bool:
    """A rejection by the node's own access control: its ``dicom.access.refused`` is the alert."""
    data = event.data
    return (
        data.association.role == "acceptor"
        and data.source == "service_user"
        and data.reason in (3, 7)
    )
