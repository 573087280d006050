"""``dimsebus send`` puts a file's own bytes on the wire when the peer accepted its syntax.

dcmtk's storescp with ``--bit-preserving`` writes each data set exactly as it
received it. A source file holds an element of VR UN whose tag pydicom knows,
which pydicom would encode again with the tag's own VR (as pynetdicom's
re-encoding did): the stored data set is the source's bytes only if nothing
decoded and encoded it on the way. A file in
another transfer syntax than the one accepted arrives too, converted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode, split_dataset

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.node.synthetic import ct_instance
from tests.integration.conftest import of_type, read_events
from tests.integration.peers import storescp
from tests.integration.sending import dimsebus_send

pytestmark = pytest.mark.integration
RECEIVED = "dicom.cstore.response.received"
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.21.1", "1.2.826.0.1.3680043.8.498.21.1.1"


def referring_physician_as_un() -> bytes:
    """(0008,0090) Referring Physician's Name with VR UN (explicit VR little endian).

    pydicom reads an UN element of a known tag as its dictionary VR (PN here) and
    writes it so: the bytes change, the value does not.
    """
    name = b"REFERRING^DOCTOR"
    return b"\x08\x00\x90\x00UN\x00\x00" + len(name).to_bytes(4, "little") + name


def write_instance(folder: Path, number: int, syntax: str, rows: int = 64) -> Path:
    """A CT file in ``syntax``; an explicit VR one holds an element pydicom would re-encode."""
    ds = ct_instance(
        patient_id="BYTES", study_uid=STUDY, series_uid=SERIES, number=number, rows=rows
    )
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    path = folder / f"{number:03d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    if syntax == ExplicitVRLittleEndian:
        data = path.read_bytes()
        _, offset = split_dataset(path)
        at = data.index(b"\x10\x00\x10\x00PN", offset)  # (0010,0010) follows (0008,0090)
        path.write_bytes(data[:at] + referring_physician_as_un() + data[at:])
    return path


def data_set_bytes(path: Path) -> bytes:
    """The bytes after the file meta (PS3.10 7.1)."""
    return path.read_bytes()[split_dataset(path)[1] :]


async def test_the_accepted_syntax_goes_as_its_bytes_and_another_is_converted(
    tmp_path: Path, amqp_url: str
) -> None:
    # given two explicit VR files (each with an element pydicom re-encodes) and an implicit one
    study = tmp_path / "study"
    study.mkdir()
    as_bytes = [write_instance(study, n, ExplicitVRLittleEndian) for n in (1, 2)]
    converted = write_instance(study, 3, ImplicitVRLittleEndian)
    reencoded = encode(dcmread(as_bytes[0]), False, True, False)
    assert reencoded != data_set_bytes(as_bytes[0])  # what the old path would have sent
    node_id = f"bytes-{os.getpid()}-{tmp_path.name[-6:]}"
    # when `dimsebus send` stores them in a storescp that accepts explicit VR only
    # (one context per SOP class: the implicit file's syntax is not the accepted one)
    with storescp(tmp_path / "received", "--bit-preserving", "+xe") as peer:
        output = await dimsebus_send(tmp_path, peer.port, node_id, amqp_url)
        stored = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in peer.files()}
    # then the explicit files' data sets arrived byte for byte, decoded by nobody
    assert len(stored) == 3, output
    for source in as_bytes:
        uid = str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)
        assert data_set_bytes(stored[uid]) == data_set_bytes(source)
    # and the implicit file arrived converted to the accepted syntax, its content the same
    uid = str(dcmread(converted, stop_before_pixels=True).SOPInstanceUID)
    arrived = dcmread(stored[uid])
    assert arrived.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert arrived == dcmread(converted)
    # and every response is an event naming the request's instance, as before
    events = await read_events(amqp_url, f"dimsebus://node/{node_id}", _responses(3))
    received = of_type(events, RECEIVED)
    uids = sorted(e.data.affected_sop_instance_uid for e in received)  # type: ignore[attr-defined]
    sources = [*as_bytes, converted]
    assert uids == sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources)
    for event in received:
        assert isinstance(event.data, ev.CStoreResponseReceivedData)
        assert event.data.affected_sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
        assert event.data.transfer_syntax_uid == ExplicitVRLittleEndian
        assert (event.data.status, event.data.status_category) == (0, "success")


def _responses(count: int) -> Callable[[list[CloudEvent]], bool]:
    return lambda events: len(of_type(events, RECEIVED)) >= count
