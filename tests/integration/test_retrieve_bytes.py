"""The node's C-MOVE and C-GET send an archived file's own bytes when the peer accepted its syntax.

As in ``test_send_bytes.py``: an archived explicit VR file holds an element of VR UN
whose tag pydicom knows, which pydicom would encode again with the tag's own VR. dcmtk
(storescp, getscu) with ``--bit-preserving`` writes each data set as it received it,
so the stored data set is the archive file's only if nothing decoded and encoded it on
the way. An implicit VR file, whose syntax the peer did not accept, arrives converted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode, split_dataset

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.node.archive import Archive
from tests.integration.conftest import RunningNode, of_type, read_events
from tests.integration.peers import dcmtk, run_tool, storescp
from tests.integration.test_send_bytes import (
    data_set_bytes,
    referring_physician_as_un,
    write_instance,
)

pytestmark = pytest.mark.integration
RECEIVED = "dicom.cstore.response.received"
STUDY = "1.2.826.0.1.3680043.8.498.21.1"  # test_send_bytes' study


def archive_study(node: RunningNode, tmp_path: Path, accepted: str) -> tuple[list[Path], Path]:
    """Two files in the ``accepted`` syntax, each with an element pydicom would re-encode
    in the archive's file, and one in the other syntax.

    Explicit VR: (0008,0090) with VR UN, which pydicom writes as PN. Implicit VR: the same
    element after (0008,1030), which pydicom writes in tag order. The archive writes what
    pydicom read: the element goes into the archived file afterwards, where the node
    sends it from.
    """
    other = ImplicitVRLittleEndian if accepted == ExplicitVRLittleEndian else ExplicitVRLittleEndian
    source = tmp_path / "source"
    source.mkdir()
    archive = Archive(node.settings.archive_path)
    try:
        as_bytes = [archive.import_file(write_instance(source, n, accepted)) for n in (1, 2)]
        converted = archive.import_file(write_instance(source, 3, other))
    finally:
        archive.close()
    for instance in as_bytes:
        data = instance.path.read_bytes()
        at = data.index(b"\x10\x00\x10\x00", split_dataset(instance.path)[1])  # (0010,0010)
        instance.path.write_bytes(data[:at] + _element(accepted) + data[at:])
        reencoded = encode(dcmread(instance.path), *_encoding(accepted))
        assert reencoded != data_set_bytes(instance.path)  # what a decoding node would send
    assert dcmread(converted.path).file_meta.TransferSyntaxUID == other
    return [i.path for i in as_bytes], converted.path


def _element(syntax: str) -> bytes:
    if syntax == ExplicitVRLittleEndian:
        return referring_physician_as_un()
    name = b"REFERRING^DOCTOR"
    return b"\x08\x00\x90\x00" + len(name).to_bytes(4, "little") + name


def _encoding(syntax: str) -> tuple[bool, bool, bool]:
    return (syntax == ImplicitVRLittleEndian, True, False)


def by_uid(paths: list[Path]) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def assert_bytes_and_converted(
    stored: dict[str, Path], as_bytes: list[Path], converted: Path, accepted: str
) -> None:
    """The ``accepted`` syntax's data sets arrived byte for byte, the other one converted."""
    assert len(stored) == 3
    for archived in as_bytes:
        uid = str(dcmread(archived, stop_before_pixels=True).SOPInstanceUID)
        assert data_set_bytes(stored[uid]) == data_set_bytes(archived)
    uid = str(dcmread(converted, stop_before_pixels=True).SOPInstanceUID)
    arrived = dcmread(stored[uid])
    assert arrived.file_meta.TransferSyntaxUID == accepted
    assert arrived == dcmread(converted)


def responses(count: int, *types: str) -> Callable[[list[CloudEvent]], bool]:
    return lambda events: (
        len(of_type(events, RECEIVED)) >= count and all(of_type(events, t) for t in types)
    )


async def test_a_move_sends_the_archived_bytes_and_converts_another_syntax(
    tmp_path: Path, amqp_url: str, start_node: Any
) -> None:
    # given a storescp that accepts explicit VR only and writes what it receives,
    # and a node archiving two explicit VR files (with an UN element) and an implicit one
    with storescp(tmp_path / "received", "--bit-preserving", "+xe") as peer:
        node: RunningNode = await start_node(instances=1, destinations={"STORESCP": peer.port})
        as_bytes, converted = archive_study(node, tmp_path, ExplicitVRLittleEndian)
        # when dcmtk's movescu asks the node to move the study there
        output = await run_tool(
            dcmtk("movescu"), "-v", "-S", "-aet", "MOVESCU", "-aec", node.settings.ae_title,
            "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
            "127.0.0.1", str(node.settings.port),
        )  # fmt: skip
        stored = by_uid(peer.files())
        wire = peer.log.read_text(errors="replace")
    # then the explicit files arrived as the archive's bytes, the implicit one converted
    assert len(stored) == 3, output
    assert_bytes_and_converted(stored, as_bytes, converted, ExplicitVRLittleEndian)
    # and the requestor is still the Move Originator on the wire
    assert wire.count("D: Move Originator AE Title      : MOVESCU") == 3
    # and every response is an event of the move, as before
    events = await read_events(amqp_url, node.source, responses(3, "dicom.move.completed"))
    (requested,) = of_type(events, "dicom.move.requested")
    (completed,) = of_type(events, "dicom.move.completed")
    assert isinstance(requested.data, ev.MoveRequestedData)
    assert isinstance(completed.data, ev.MoveCompletedData)
    assert (completed.data.status, completed.data.counts.completed) == (0, 3)
    received = of_type(events, RECEIVED)
    assert {e.data.affected_sop_instance_uid for e in received} == set(stored)  # type: ignore[attr-defined]
    originator = ev.MoveOriginator(ae_title="MOVESCU", message_id=requested.data.message_id)
    for event in received:
        assert isinstance(event.data, ev.CStoreResponseReceivedData)
        assert event.data.move_originator == originator
        assert event.data.transfer_syntax_uid == ExplicitVRLittleEndian
        assert (event.data.status, event.data.operation) == (0, requested.data.operation)


async def test_a_get_sends_the_archived_bytes_and_converts_another_syntax(
    tmp_path: Path, amqp_url: str, start_node: Any
) -> None:
    # given a node archiving two implicit VR files (the node accepts implicit VR first, on
    # the contexts getscu proposes for its C-STOREs) and an explicit one
    node: RunningNode = await start_node(instances=1)
    as_bytes, converted = archive_study(node, tmp_path, ImplicitVRLittleEndian)
    got = tmp_path / "got"
    got.mkdir()
    # when dcmtk's getscu, writing what it receives, retrieves it
    output = await run_tool(
        dcmtk("getscu"), "-v", "-S", "-aet", "GETSCU", "-aec", node.settings.ae_title,
        "--bit-preserving", "-od", str(got),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
        "127.0.0.1", str(node.settings.port),
    )  # fmt: skip
    stored = by_uid(sorted(p for p in got.iterdir() if p.is_file()))
    # then the explicit files arrived as the archive's bytes, the implicit one converted
    assert len(stored) == 3, output
    assert_bytes_and_converted(stored, as_bytes, converted, ImplicitVRLittleEndian)
    # and every response on the requestor's association is an event of the get
    events = await read_events(amqp_url, node.source, responses(3, "dicom.get.completed"))
    (requested,) = of_type(events, "dicom.get.requested")
    (completed,) = of_type(events, "dicom.get.completed")
    assert completed.data.counts.completed == 3  # type: ignore[attr-defined]
    received = of_type(events, RECEIVED)
    assert {e.data.affected_sop_instance_uid for e in received} == set(stored)  # type: ignore[attr-defined]
    for event in received:
        assert isinstance(event.data, ev.CStoreResponseReceivedData)
        assert event.data.operation == requested.data.operation  # type: ignore[attr-defined]
        assert event.data.status == 0
