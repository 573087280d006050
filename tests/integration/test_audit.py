"""The audit trail against the real broker, dcmtk peers, the node and Debian's rsyslog."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.audit.app import AuditSettings, deliver, run_audit
from dimsebus.services.audit.chain import verify
from dimsebus.services.audit.store import AuditStore, Query
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.publisher import Publisher
from tests.integration.conftest import (
    RunningNode,
    Services,
    log_marker,
    movescu,
    of_type,
    read_events,
)
from tests.integration.peers import refusing_scp, rsyslog, storescp

pytestmark = pytest.mark.integration
AuditFactory = Callable[..., Any]
RECEIVED = "dicom.cstore.response.received"


@pytest.fixture
def start_audit(tmp_path: Path, amqp_url: str, services: Services) -> AuditFactory:
    """Run in-process audit services (``await start_audit(syslog_port=...)``)."""

    async def start(**settings: Any) -> AuditSettings:
        config = AuditSettings(
            amqp_url=amqp_url,
            db=str(tmp_path / "audit.sqlite"),
            audit_source="dimsebus-test",
            retry_after=0.5,
            **settings,
        )
        await services.start(run_audit, config)
        return config

    return start


async def cli(*argv: str) -> tuple[int, str]:
    """`dimsebus ARGV...`: its exit status and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dimsebus.services",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, output.decode()


async def recorded(db: str, move_id: str, count: int, within: float = 60.0) -> list[dict[str, Any]]:
    """`dimsebus audit query --move ID --json`, once the store holds ``count`` transfers."""

    def transfers() -> int:
        store = AuditStore.open(db)
        try:
            return sum(r.event_type == RECEIVED for r in store.records(Query(move=move_id)))
        finally:
            store.close()

    await _until(lambda: transfers() >= count, within, f"{count} transfers of move {move_id}")
    _, output = await cli("audit", "query", "--db", db, "--move", move_id, "--json")
    return list(json.loads(output))


def of_kind(records: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event_type"] == event_type]


async def test_a_move_is_audited_verified_and_tampering_is_found(
    tmp_path: Path, amqp_url: str, start_node: Any, start_audit: AuditFactory
) -> None:
    # given the audit service, and a 100-instance C-MOVE through the node
    audit = await start_audit()
    with storescp(tmp_path / "received") as peer:
        node: RunningNode = await start_node(instances=100, destinations={"STORESCP": peer.port})
        await movescu(node, "STORESCP")
    events = await read_events(
        amqp_url, node.source, lambda found: bool(of_type(found, "dicom.move.completed"))
    )
    move_id = str(of_type(events, "dicom.move.requested")[0].data.operation.id)  # type: ignore[attr-defined]
    # when an auditor asks for the move's transfers
    records = await recorded(audit.db, move_id, 100)
    # then each instance's transfer is there, with where it went and how it ended
    transfers = of_kind(records, RECEIVED)
    assert sorted(r["sop_instance_uid"] for r in transfers) == sorted(node.instance_uids)
    assert {(r["peer_ae_title"], r["status"], r["study_uid"]) for r in transfers} == {
        ("STORESCP", 0, node.study_uid)
    }
    assert of_kind(records, "dicom.move.requested")
    # and the chain verifies
    status, output = await cli("audit", "verify", "--db", audit.db)
    assert status == 0, output
    assert "OK:" in output
    # when the log is replayed and an event is delivered a second time
    before = await asyncio.to_thread(_count, audit.db)
    status, output = await cli("audit", "replay", "--db", audit.db, "--amqp-url", amqp_url)
    assert status == 0, output
    assert "over AMQP" not in output  # read over the stream protocol, as the tracker reads
    # (and, after it, a marker event: once the service recorded the marker, it has handled
    # the event delivered again, for it handles events one at a time in arrival order)
    marker = log_marker()
    connection = await connect(amqp_url, "dimsebus-test-redeliver")
    async with connection:
        publisher = Publisher(await confirming_channel(connection))
        await publisher.publish(events[5])
        await publisher.publish(marker)
    await _until(lambda: _holds(audit.db, str(marker.id)), what=f"the marker {marker.id} recorded")
    # then no record is added twice
    assert "0 new records" in output
    assert await asyncio.to_thread(_count, audit.db) == before + 1
    # when one row is edited in the database behind the service's back
    tampered = transfers[40]["seq"]
    with sqlite3.connect(audit.db) as db:
        db.execute("UPDATE audit_records SET status = 42752 WHERE seq = ?", (tampered,))
    # then verify names exactly that record
    status, output = await cli("audit", "verify", "--db", audit.db)
    assert status == 1
    assert f"BROKEN at record {tampered}:" in output
    assert "content does not match its hash" in output


def _holds(db: str, event_id: str) -> bool:
    store = AuditStore.open(db)
    try:
        return any(r.event_id == event_id for r in store.records())
    finally:
        store.close()


def _count(db: str) -> int:
    store = AuditStore.open(db)
    try:
        return store.count()
    finally:
        store.close()


def _messages(collector: Any) -> list[ET.Element]:
    """The XML of every audit message the collector wrote."""
    return [ET.fromstring(line.split(b"\xef\xbb\xbf", 1)[1]) for line in collector.messages()]


def _event_ids(messages: list[ET.Element]) -> list[str]:
    return [str(m.find("EventIdentification/EventID").get("originalText")) for m in messages]  # type: ignore[union-attr]


async def _until(condition: Callable[[], bool], within: float = 60.0, what: str = "") -> None:
    """Wait until ``condition()`` (run on a thread) holds; fail naming ``what`` was awaited."""
    try:
        async with asyncio.timeout(within):
            while not await asyncio.to_thread(condition):  # noqa: ASYNC110 - a fact to poll
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"waited {within} s for {what or condition}") from None


def about(messages: list[ET.Element], text: str) -> list[str]:
    """The kinds of the messages that mention ``text`` (the queue is shared by the tests)."""
    return sorted(_event_ids([m for m in messages if text in ET.tostring(m, encoding="unicode")]))


async def test_audit_messages_reach_rsyslog_and_survive_its_outage(
    tmp_path: Path, start_node: Any, start_audit: AuditFactory
) -> None:
    # given rsyslog listening on TCP, and the audit service sending to it
    begin, transferred = "Begin Transferring DICOM Instances", "DICOM Instances Transferred"
    with rsyslog(tmp_path / "syslog") as collector:
        port = collector.port
        audit = await start_audit(syslog_host="127.0.0.1", syslog_port=port)
        with storescp(tmp_path / "received") as peer:
            node: RunningNode = await start_node(instances=10, destinations={"STORESCP": peer.port})
            # when a move runs
            await movescu(node, "STORESCP")
            # then rsyslog receives one begin and one transferred message for its study
            await _until(
                lambda: len(about(_messages(collector), node.study_uid)) >= 2,
                what="rsyslog to receive the first move's begin and transferred messages",
            )
            first = _messages(collector)
    assert about(first, node.study_uid) == [begin, transferred]
    (message,) = [
        m
        for m in first
        if node.study_uid in ET.tostring(m, encoding="unicode") and _event_ids([m]) == [transferred]
    ]
    classes = message.findall(
        "ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass"
    )
    assert [c.get("NumberOfInstances") for c in classes] == ["10"]
    # when the collector is down while another move and a refused association happen
    with (
        storescp(tmp_path / "again") as peer,
        refusing_scp(ae_title="REFUSER") as refuser,
    ):
        second: RunningNode = await start_node(
            instances=5, destinations={"STORESCP": peer.port, "REFUSER": refuser}
        )
        await movescu(second, "STORESCP")
        await movescu(second, "REFUSER")
        store = AuditStore.open(audit.db)
        await _until(
            lambda: store.spool_depth() >= 3,
            what="3 messages spooled while rsyslog is down (2 of the move, 1 of the refusal)",
        )
        store.close()
    # then the spooled messages arrive once it is back on the same port
    with rsyslog(tmp_path / "syslog-again", port) as collector:
        await _until(
            lambda: len(about(_messages(collector), second.study_uid)) >= 2,
            what="the spooled begin and transferred messages of the second move, once back",
        )
        await _until(
            lambda: bool(about(_messages(collector), "REFUSER")),
            what="the spooled Security Alert of REFUSER's refusal, once back",
        )
        later = _messages(collector)
    assert about(later, second.study_uid) == [begin, transferred]
    assert about(later, "dicom://REFUSER@") == ["Security Alert"]


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = str(tmp_path / "audit.sqlite")
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    return url


def test_every_store_keeps_one_linear_chain(audit_store: str) -> None:
    # given two writers on one store (two audit services sharing a database)
    story = move_story(
        node_id="n1", start=dt.datetime(2026, 11, 26, tzinfo=dt.UTC), ids=sequential_ids()
    )
    first, second = AuditStore.open(audit_store), AuditStore.open(audit_store)
    # when they append overlapping batches in turn
    first.append(story[:10])
    second.append(story[5:15])
    first.append(story[12:])
    # then every event is recorded once, in one chain that verifies
    records = list(second.records())
    assert [r.seq for r in records] == list(range(1, len(story) + 1))
    assert sorted(r.event_id for r in records) == sorted(str(e.id) for e in story)
    assert verify(records).intact == len(story)
    first.close()
    second.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1."""
    cert, key = tmp_path / "collector.pem", tmp_path / "collector.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_audit_messages_go_over_tls_when_configured(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    # given a TLS syslog receiver whose certificate the configured CA file holds
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(cert), str(key))
    frames: list[bytes] = []

    async def receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                length = int((await reader.readuntil(b" ")).strip())
            except (asyncio.IncompleteReadError, ValueError):
                break
            frames.append(await reader.readexactly(length))
        writer.close()

    server = await asyncio.start_server(receive, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    # and a spool holding one message
    settings = AuditSettings(
        db=str(tmp_path / "audit.sqlite"),
        syslog_host="127.0.0.1",
        syslog_port=port,
        syslog_tls=True,
        syslog_ca_file=cert,
        retry_after=0.2,
    )
    store = AuditStore.open(settings.db)
    store.spool([("m1", "alert", dt.datetime(2026, 11, 26, tzinfo=dt.UTC), b"11 <85>1 hello")])
    # when the sender runs
    stop = asyncio.Event()
    sender = asyncio.create_task(deliver(settings, store, stop))
    await _until(lambda: store.spool_depth() == 0, within=20)
    stop.set()
    await sender
    server.close()
    store.close()
    # then the collector got the frame over TLS, verified against the configured CA
    assert frames == [b"<85>1 hello"]
