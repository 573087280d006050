"""Access control at the node's DICOM edge, against real associations (issue 17, item 1).

The peers are dcmtk's tools and pynetdicom AEs that ask for more than they may.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dimsebus.schemas import events as ev
from dimsebus.services.node.config import Peer
from tests.integration.conftest import RunningNode, of_type, read_events
from tests.integration.peers import dcmtk, run_tool

REFUSED = "dicom.access.refused"
FIND, MOVE, GET = (f"1.2.840.10008.5.1.4.1.2.2.{n}" for n in (1, 2, 3))  # Study Root (PS3.4 C.6.2)


def _study(node: RunningNode) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = node.study_uid
    identifier.PatientName = ""
    return identifier


def _associate(node: RunningNode, calling: str, *contexts: str, **kwargs: Any) -> Any:
    ae = AE(ae_title=calling)
    for context in contexts:
        ae.add_requested_context(context)
    return ae.associate("127.0.0.1", node.settings.port, ae_title="DIMSEBUS", **kwargs)


def _refusals(events: list[Any]) -> list[ev.AccessRefused]:
    return [e for e in of_type(events, REFUSED) if isinstance(e, ev.AccessRefused)]


async def test_an_unknown_peer_may_echo_and_nothing_else(amqp_url: str, start_node: Any) -> None:
    # given a node with the default access: unknown calling AE titles may only echo
    node: RunningNode = await start_node(instances=3, destinations={"STORESCP": 1})

    def probe() -> tuple[int, list[int], int, int, bool]:
        assoc = _associate(
            node,
            "STRANGER",
            Verification,
            FIND,
            MOVE,
            GET,
        )
        assert assoc.is_established
        echo = int(assoc.send_c_echo().Status)
        found = [int(status.Status) for status, _ in assoc.send_c_find(_study(node), FIND)]
        moved = [int(s.Status) for s, _ in assoc.send_c_move(_study(node), "STORESCP", MOVE)]
        got = [int(s.Status) for s, _ in assoc.send_c_get(_study(node), GET)]
        for _ in range(500):  # the A-ABORT follows the third response: wait for it, 5 s at most
            if assoc.is_aborted:
                break
            time.sleep(0.01)
        aborted = assoc.is_aborted
        return echo, found, moved[-1] if moved else -1, got[-1] if got else -1, aborted

    # when a stranger echoes, then asks to find, move and get the study
    echo, found, moved, got, aborted = await asyncio.to_thread(probe)
    # then the echo succeeds, and each of the rest is refused Not Authorized, with no data
    assert echo == 0x0000
    assert found == [0x0124]
    assert (moved, got) == (0x0124, 0x0124)
    # and after the third refusal the node aborted the association
    assert aborted
    events = await read_events(amqp_url, node.source, lambda found: len(_refusals(found)) >= 3)
    refusals = _refusals(events)
    assert [(r.data.service, r.data.status, r.data.refused) for r in refusals] == [
        ("find", 0x0124, 1),
        ("move", 0x0124, 2),
        ("get", 0x0124, 3),
    ]
    assert {r.data.reason for r in refusals} == {"service_not_allowed"}
    assert {r.data.association.peer_ae_title for r in refusals} == {"STRANGER"}
    assert not of_type(events, "dicom.move.requested")
    assert not of_type(events, "dicom.get.requested")


async def test_an_unknown_peer_asking_only_to_move_is_rejected(
    amqp_url: str, start_node: Any
) -> None:
    # given a node with the default access
    node: RunningNode = await start_node(instances=3, destinations={"STORESCP": 1})
    # when dcmtk's movescu calls as an AE title the node does not know
    output = await run_tool(
        dcmtk("movescu"),
        "-aet",
        "STRANGER",
        "-aec",
        "DIMSEBUS",
        "-aem",
        "STORESCP",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={node.study_uid}",
        "127.0.0.1",
        str(node.settings.port),
    )
    # then the association is rejected: calling AE title not recognised (PS3.8 9.3.4)
    assert "Association Rejected" in output, output
    assert "Calling AE Title Not Recognized" in output, output
    events = await read_events(
        amqp_url, node.source, lambda found: bool(_refusals(found)) and len(found) >= 2
    )
    (refused,) = _refusals(events)
    assert refused.data.service == "association"
    assert refused.data.reason == "calling_ae_title_not_recognised"
    assert refused.data.association.peer_ae_title == "STRANGER"
    (rejected,) = of_type(events, "dicom.association.rejected")
    assert isinstance(rejected, ev.AssociationRejected)
    assert (rejected.data.result, rejected.data.reason) == ("permanent", 3)


async def test_another_called_ae_title_is_rejected(amqp_url: str, start_node: Any) -> None:
    # given a node called DIMSEBUS
    node: RunningNode = await start_node(instances=1)
    # when echoscu calls it by another AE title
    output = await run_tool(
        dcmtk("echoscu"), "-aet", "MOVESCU", "-aec", "NOTME", "127.0.0.1", str(node.settings.port)
    )
    # then it is rejected: called AE title not recognised
    assert "Called AE Title Not Recognized" in output, output
    events = await read_events(amqp_url, node.source, lambda found: bool(_refusals(found)))
    (refused,) = _refusals(events)
    assert (refused.data.reason, refused.data.called_ae_title) == (
        "called_ae_title_not_recognised",
        "NOTME",
    )


async def test_a_listed_peer_from_another_host_is_a_stranger(
    amqp_url: str, start_node: Any
) -> None:
    # given FINDER may find, but only from 127.0.0.2
    peers = {"FINDER": Peer(host="127.0.0.2", allow=frozenset({"echo", "find"}))}
    node: RunningNode = await start_node(instances=2, peers=peers)

    def find_from(address: str) -> list[int]:
        assoc = _associate(
            node,
            "FINDER",
            Verification,
            FIND,
            bind_address=(address, 0),
        )
        assert assoc.is_established
        statuses = [int(s.Status) for s, _ in assoc.send_c_find(_study(node), FIND)]
        assoc.release()
        return statuses

    # when it finds from its own host, then from another
    from_its_host = await asyncio.to_thread(find_from, "127.0.0.2")
    from_elsewhere = await asyncio.to_thread(find_from, "127.0.0.1")
    # then its own host gets the study, the other gets Not Authorized
    assert from_its_host == [0xFF00, 0x0000]
    assert from_elsewhere == [0x0124]
    events = await read_events(amqp_url, node.source, lambda found: bool(_refusals(found)))
    (refused,) = _refusals(events)
    assert refused.data.reason == "host_not_allowed"
    assert "127.0.0.1" in refused.data.detail


async def test_a_peer_allowed_to_find_may_not_store(amqp_url: str, start_node: Any) -> None:
    # given FINDER may echo and find, from anywhere
    peers = {"FINDER": Peer(allow=frozenset({"echo", "find"}))}
    node: RunningNode = await start_node(instances=1, peers=peers)
    instance = node.node.archive.by_uids(node.instance_uids[:1])
    dataset = next(iter(instance)).read()

    def store() -> int:
        ae = AE(ae_title="FINDER")
        ae.add_requested_context(Verification)
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        peer = ae.associate("127.0.0.1", node.settings.port, ae_title="DIMSEBUS")
        status = int(peer.send_c_store(dataset).Status)
        peer.release()
        return status

    # when it sends a C-STORE
    status = await asyncio.to_thread(store)
    # then it is refused, and the archive is unchanged
    assert status == 0x0124
    assert node.node.archive.count() == 1
    events = await read_events(amqp_url, node.source, lambda found: bool(_refusals(found)))
    (refused,) = _refusals(events)
    assert (refused.data.service, refused.data.affected_sop_class_uid) == (
        "store",
        str(dataset.SOPClassUID),
    )


async def test_a_large_data_set_for_a_refused_service_is_aborted_not_buffered(
    amqp_url: str, start_node: Any
) -> None:
    # given a node, and a stranger (may only echo) that proposed CT storage too
    node: RunningNode = await start_node(instances=1)
    dataset = next(iter(node.node.archive.by_uids(node.instance_uids[:1]))).read()
    dataset.PixelData = b"\0" * (4 * 1024**2)  # 4 MiB, beyond the 1 MiB the node listens to

    def store() -> tuple[bool, bool]:
        ae = AE(ae_title="STRANGER")
        ae.add_requested_context(Verification)
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.settings.port, ae_title="DIMSEBUS")
        established = assoc.is_established
        response = assoc.send_c_store(dataset)
        return established, "Status" in response

    # when it streams the C-STORE
    established, answered = await asyncio.to_thread(store)
    # then the association, accepted for the echo, is aborted instead of answered
    assert established
    assert not answered
    assert node.node.archive.count() == 1
