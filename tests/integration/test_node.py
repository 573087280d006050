"""The node against real dcmtk peers: every C-STORE-RSP becomes exactly one event on the log."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.node.synthetic import write_study
from tests.broker import Broker
from tests.integration.conftest import (
    RunningNode,
    log_until_now,
    movescu,
    of_type,
    read_events,
    until,
)
from tests.integration.peers import dcmtk, run_tool, small_filesystem, storescp
from tests.integration.sending import dimsebus_send

pytestmark = pytest.mark.integration
RECEIVED, MISSING = "dicom.cstore.response.received", "dicom.cstore.response.missing"


def has(count: int, *types: str) -> Callable[[list[CloudEvent]], bool]:
    """Done once ``count`` response events and one of each of ``types`` arrived."""

    def done(events: list[CloudEvent]) -> bool:
        responses = len(of_type(events, RECEIVED)) + len(of_type(events, MISSING))
        return responses >= count and all(of_type(events, t) for t in types)

    return done


async def test_send_to_storescp(tmp_path: Path, amqp_url: str) -> None:
    # given 50 files and dcmtk's storescp
    files = write_study(tmp_path / "study", 50, seed="send")
    node_id = f"send-{os.getpid()}-{tmp_path.name[-6:]}"
    with storescp(tmp_path / "received") as peer:
        # when `dimsebus send` stores them
        output = await dimsebus_send(
            tmp_path, peer.port, node_id, amqp_url, "--label", "site=ward-7"
        )
        assert len(peer.files()) == 50, output
    # then the log holds 50 response events with the right UIDs, statuses and labels
    events = await read_events(
        amqp_url, f"dimsebus://node/{node_id}", has(50, "dicom.association.released")
    )
    received = of_type(events, RECEIVED)
    assert len(received) == 50
    uids = {e.data.affected_sop_instance_uid for e in received}  # type: ignore[attr-defined]
    assert uids == {_uid(path) for path in files}
    for event in received:
        data = event.data
        assert isinstance(data, ev.CStoreResponseReceivedData)
        assert (data.status, data.status_category, data.operation.kind) == (0, "success", "store")
        assert data.labels == {"site": "ward-7"}
        assert data.association.peer_ae_title == "STORESCP"
        assert data.presentation_context_id % 2 == 1
        assert data.move_originator is None
    assert len({(e.data.association.id, e.data.message_id) for e in received}) == 50  # type: ignore[attr-defined]


def _uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


async def test_movescu_through_the_node_to_storescp(
    tmp_path: Path, amqp_url: str, start_node: Any
) -> None:
    # given a node with a 50-instance study that knows storescp as STORESCP
    with storescp(tmp_path / "received") as peer:
        node: RunningNode = await start_node(instances=50, destinations={"STORESCP": peer.port})
        # when dcmtk's movescu (AE MOVESCU) asks the node to move the study there
        output = await movescu(node, "STORESCP")
        assert len(peer.files()) == 50, output
        wire = peer.log.read_text(errors="replace")
    events = await read_events(amqp_url, node.source, has(50, "dicom.move.completed"))
    # then one move.requested / move.completed pair frames 50 successful responses
    (requested,) = of_type(events, "dicom.move.requested")
    (completed,) = of_type(events, "dicom.move.completed")
    assert isinstance(requested.data, ev.MoveRequestedData)
    assert isinstance(completed.data, ev.MoveCompletedData)
    assert requested.data.move_destination == "STORESCP"
    assert requested.data.association.peer_ae_title == "MOVESCU"
    assert completed.data.status == 0
    assert completed.data.counts.completed == 50
    received = of_type(events, RECEIVED)
    assert len(received) == 50
    originator = ev.MoveOriginator(ae_title="MOVESCU", message_id=requested.data.message_id)
    for event in received:
        data = event.data
        assert isinstance(data, ev.CStoreResponseReceivedData)
        assert data.move_originator == originator
        assert data.operation == requested.data.operation
        assert data.status == 0
        # with the study, and the Patient ID hashed by the default PHI policy
        assert data.study_instance_uid == node.study_uid
        assert (data.patient_id or "").startswith("hmac-sha256:")
    assert {e.data.affected_sop_instance_uid for e in received} == set(node.instance_uids)  # type: ignore[attr-defined]
    # and on the wire storescp saw the requestor, not the node, as Move Originator (PS3.7 C.4.2)
    originators = [line for line in wire.splitlines() if "Move Originator" in line]
    assert originators.count("D: Move Originator AE Title      : MOVESCU") == 50, originators[:4]
    assert (
        originators.count(f"D: Move Originator ID            : {requested.data.message_id}") == 50
    )


async def test_getscu_against_the_node(tmp_path: Path, amqp_url: str, start_node: Any) -> None:
    # given a node with a 20-instance study
    node: RunningNode = await start_node(instances=20)
    (tmp_path / "got").mkdir()
    # when dcmtk's getscu retrieves it
    output = await run_tool(
        dcmtk("getscu"),
        "-v",
        "-S",
        "-aet",
        "GETSCU",
        "-aec",
        node.settings.ae_title,
        "-od",
        str(tmp_path / "got"),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={node.study_uid}",
        "127.0.0.1",
        str(node.settings.port),
    )
    assert len(list((tmp_path / "got").glob("*"))) == 20, output
    events = await read_events(amqp_url, node.source, has(20, "dicom.get.completed"))
    # then the C-STOREs on the requestor's own association are captured, framed by the get pair
    (requested,) = of_type(events, "dicom.get.requested")
    (completed,) = of_type(events, "dicom.get.completed")
    received = of_type(events, RECEIVED)
    assert len(received) == 20
    for event in received:
        data = event.data
        assert isinstance(data, ev.CStoreResponseReceivedData)
        assert data.association.role == "acceptor"
        assert data.association.peer_ae_title == "GETSCU"
        assert data.operation == requested.data.operation  # type: ignore[attr-defined]
        assert data.move_originator is None
    assert completed.data.counts.completed == 20  # type: ignore[attr-defined]


async def test_destination_that_aborts(tmp_path: Path, amqp_url: str, start_node: Any) -> None:
    # given a destination that aborts the association on the first C-STORE-RQ
    with storescp(tmp_path / "received", "--abort-after") as peer:
        node: RunningNode = await start_node(
            instances=10, destinations={"STORESCP": peer.port}, dimse_timeout=5.0
        )
        # when a move sends the study there
        await movescu(node, "STORESCP")
    events = await read_events(
        amqp_url, node.source, has(1, "dicom.move.completed", "dicom.association.aborted")
    )
    # then the unanswered request is a missing-response event (pynetdicom may get one more
    # request onto the dying association before it notices the abort: that one is missing too)
    missing = of_type(events, MISSING)
    assert 1 <= len(missing) <= 2
    first = missing[0]
    assert isinstance(first.data, ev.CStoreResponseMissingData)
    assert first.data.reason == "aborted"
    assert first.routing_key == "dicom.cstore.response.missing.failure"
    # and the move completes reporting every failed sub-operation
    (completed,) = of_type(events, "dicom.move.completed")
    assert isinstance(completed.data, ev.MoveCompletedData)
    assert completed.data.counts.failed == 10
    assert completed.data.status_category == "failure"
    for event in missing:
        assert event.data.affected_sop_instance_uid in completed.data.failed_sop_instance_uids  # type: ignore[attr-defined]


async def test_destination_out_of_space(tmp_path: Path, amqp_url: str, start_node: Any) -> None:
    # given storescp writing into a filesystem with room for a few instances only
    with small_filesystem(tmp_path / "full", files=10) as folder, storescp(folder) as peer:
        node: RunningNode = await start_node(instances=30, destinations={"STORESCP": peer.port})
        await movescu(node, "STORESCP")
        stored = len(peer.files())
    events = await read_events(amqp_url, node.source, has(30, "dicom.move.completed"))
    # then the refused sub-operations are failure events carrying 0xA700
    failures = [e for e in of_type(events, RECEIVED) if e.data.status != 0]  # type: ignore[attr-defined]
    assert len(failures) == 20
    assert {e.data.status for e in failures} == {0xA700}  # type: ignore[attr-defined]
    assert all(e.routing_key == "dicom.cstore.response.received.failure" for e in failures)
    assert len(of_type(events, RECEIVED)) == 30
    assert stored == 10


@pytest.mark.faults
@pytest.mark.exclusive  # it stops the broker: never beside other tests (make test runs it alone)
async def test_broker_outage_during_a_move_loses_nothing(
    tmp_path: Path, amqp_url: str, broker: Broker, start_node: Any
) -> None:
    # given a node moving 200 instances
    assert broker.ctl is not None, "this test stops the broker: it needs rabbitmqctl"
    with storescp(tmp_path / "received") as peer:
        node: RunningNode = await start_node(instances=200, destinations={"STORESCP": peer.port})
        move = asyncio.create_task(movescu(node, "STORESCP"))
        # when the broker stops in the middle of it (the destination is held still after
        # 20 instances until the broker is down: the node moves 200 in a fraction of the
        # time rabbitmqctl takes to stop it), and comes back after the move
        await until(lambda: len(peer.files()) >= 20)
        peer.process.send_signal(signal.SIGSTOP)
        try:
            await until(  # the relay has published what was answered so far
                lambda: node.node.outbox.depth() == 0, what="the outbox to drain before the outage"
            )
            await asyncio.to_thread(broker.ctl, ["rabbitmqctl", "stop_app"])
        finally:
            peer.process.send_signal(signal.SIGCONT)
        try:
            await asyncio.wait_for(move, 120)
            held = node.node.outbox.depth()
            stored = {_uid(path) for path in peer.files()}
        finally:
            await asyncio.to_thread(broker.ctl, ["rabbitmqctl", "start_app"])
    assert held > 0, "the move finished before the broker stopped"
    # then the outbox drains, and the log holds each response exactly once by id
    await read_events(amqp_url, node.source, has(len(stored), "dicom.move.completed"), within=120)
    events = await log_until_now(amqp_url, node.source)
    received = of_type(events, RECEIVED)
    assert len(received) == len({e.id for e in received}), "duplicates by id"
    assert {e.data.affected_sop_instance_uid for e in received} == stored  # type: ignore[attr-defined]
    # every instance storescp got is one event, and it got all 200 (the node's reactor
    # checkpoint mends pynetdicom's pause race, which used to lose a C-STORE-RSP and abort)
    assert len(received) == len(stored) == 200
    assert not of_type(events, "dicom.association.aborted")
    assert node.node.outbox.depth() == 0


async def test_peer_that_never_answers_is_a_dimse_timeout(
    tmp_path: Path, amqp_url: str, start_node: Any
) -> None:
    # given a destination that takes 4 s to answer, and a node that waits 1 s
    with storescp(tmp_path / "received", "--sleep-after", "4") as peer:
        node: RunningNode = await start_node(
            instances=3, destinations={"STORESCP": peer.port}, dimse_timeout=1.0
        )
        await movescu(node, "STORESCP")
    events = await read_events(amqp_url, node.source, has(1, "dicom.move.completed"))
    # then the unanswered request is missing because of the DIMSE timeout
    missing = of_type(events, MISSING)
    assert missing
    assert missing[0].data.reason == "dimse_timeout"  # type: ignore[attr-defined]
    assert of_type(events, "dicom.association.aborted")[0].data.source == "local"  # type: ignore[attr-defined]


async def test_node_sets_tcp_nodelay_on_both_sides(start_node: Any) -> None:
    # given a node, and an association from an SCU that binds the node's own handler
    import socket

    from pynetdicom import AE, evt

    from dimsebus.services.node.association import set_tcp_nodelay

    node: RunningNode = await start_node(instances=1)
    seen: list[int] = []

    def record(event: evt.Event) -> None:
        transport = event.assoc.dul.socket
        assert transport is not None
        assert transport.socket is not None
        seen.append(transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    ae = AE(ae_title="PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, set_tcp_nodelay), (evt.EVT_ESTABLISHED, record)]
    assoc = await asyncio.to_thread(
        ae.associate, "127.0.0.1", node.settings.port, ae_title="DIMSEBUS", evt_handlers=handlers
    )
    assert assoc.is_established
    assert node.node.ae is not None
    (accepted,) = [a for a in node.node.ae.active_associations if a.is_established]
    accepted_socket: Any = accepted.dul.socket.socket  # type: ignore[union-attr]
    seen.append(accepted_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    assoc.release()
    # then both the requestor's and the node's accepted socket have Nagle off
    assert seen == [1, 1]
