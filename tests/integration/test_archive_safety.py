"""The archive against hostile data: bad UIDs, paths out of the archive, silent overwrites."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, _config

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.node.config import Peer
from dimsebus.services.node.synthetic import ct_instance, synthetic_uid
from tests.integration.conftest import RunningNode, movescu, of_type, read_events
from tests.integration.peers import storescp

pytestmark = pytest.mark.integration
EVERYTHING = Peer(allow=frozenset({"echo", "store", "find", "move", "get"}))
LETTERS_UID = "1.2.826.0.1.3680043.8.498.ABC"
LONG_UID = "1.2.826.0.1.3680043.8.498." + "1" * 174  # 200 characters
SOP_INSTANCE, STUDY, SERIES, SOP_CLASS = 0x00080018, 0x0020000D, 0x0020000E, 0x00080016
KEYWORDS = {
    SOP_INSTANCE: "SOPInstanceUID",
    STUDY: "StudyInstanceUID",
    SERIES: "SeriesInstanceUID",
    SOP_CLASS: "SOPClassUID",
}


# -- a C-STORE of any data set, whatever its UIDs --------------------------------------


def instance(number: int, patient_id: str = "P1", **uids: str) -> Dataset:
    """A CT instance with the given UIDs (by keyword) replacing its valid ones."""
    study = uids.pop("StudyInstanceUID", synthetic_uid("safety", patient_id))
    ds = ct_instance(
        patient_id=patient_id,
        study_uid=study,
        series_uid=synthetic_uid(study, "series"),
        number=number,
    )
    for keyword, value in uids.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``store(port, ds, affected=(class, instance))``: a C-STORE-RQ as HOSTILE sends it.

    pynetdicom takes Affected SOP Class and Instance UID from the file meta and
    sends the data set's bytes unread when it sends a file in chunks: the data set
    can hold anything, and need not be the request's.
    """
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    files = iter(range(1_000_000))

    def store(port: int, ds: Dataset, affected: tuple[str, str] | None = None) -> Dataset:
        sop_class, sop_instance = affected or (CTImageStorage, "1.2.826.0.1.3680043.8.498.7")
        ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance)
        path = tmp_path / f"hostile-{next(files)}.dcm"
        ds.preamble = bytes(128)
        ds.save_as(path, enforce_file_format=False)  # True would set the meta from the data set
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="DIMSEBUS")
        assert assoc.is_established
        try:
            status: Dataset = assoc.send_c_store(path)
        finally:
            assoc.release()
        return status

    return store


def files_outside(root: Path, archive: Path) -> list[Path]:
    """Files under ``root`` but not under ``archive`` whose name says they escaped."""
    return [p for p in root.rglob("*escaped*") if not p.is_relative_to(archive)]


async def test_c_store_refuses_bad_uids_before_writing(
    tmp_path: Path, start_node: Any, hostile: Any
) -> None:
    # given a node holding one instance
    node: RunningNode = await start_node(instances=1, peers={"HOSTILE": EVERYTHING})
    port, valid = node.settings.port, "1.2.826.0.1.3680043.8.498.7"
    cases = [
        # (the data set's bad UIDs, the element the answer names)
        ({"SOPInstanceUID": "../../escaped"}, SOP_INSTANCE),
        ({"SOPInstanceUID": "/tmp/escaped"}, SOP_INSTANCE),
        ({"SOPInstanceUID": "1." + "2" * 298}, SOP_INSTANCE),  # was 0xA700 "File name too long"
        ({"SOPInstanceUID": valid, "StudyInstanceUID": "../../../escaped"}, STUDY),
        ({"SOPInstanceUID": valid, "SeriesInstanceUID": "1.2.03"}, SERIES),
        ({"SOPInstanceUID": valid, "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2."}, SOP_CLASS),
    ]
    for number, (uids, element) in enumerate(cases, start=1):
        # when HOSTILE stores a data set with an invalid UID
        status = await asyncio.to_thread(hostile, port, instance(number, **uids))
        # then it is refused as not understood, naming the element, and nothing is written
        assert status.Status == 0xC000, (uids, status)
        assert element == status.OffendingElement, uids
        assert KEYWORDS[element] in status.ErrorComment
        assert len(status.ErrorComment) <= 64
        assert "escaped" not in status.ErrorComment  # the peer's value is not echoed
    assert files_outside(tmp_path, node.settings.archive_path) == []
    assert node.node.archive.count() == 1


async def test_c_store_refuses_a_data_set_that_is_not_the_requests(
    start_node: Any, hostile: Any
) -> None:
    # given a node
    node: RunningNode = await start_node(instances=1, peers={"HOSTILE": EVERYTHING})
    ds = instance(1, SOPInstanceUID="1.2.826.0.1.3680043.8.498.71")
    # when the request names another SOP Instance, or another SOP Class, than the data set
    other_instance = await asyncio.to_thread(
        hostile, node.settings.port, ds, (CTImageStorage, "1.2.826.0.1.3680043.8.498.72")
    )
    other_class = await asyncio.to_thread(
        hostile, node.settings.port, ds, (MRImageStorage, "1.2.826.0.1.3680043.8.498.71")
    )
    # then both are refused as not matching (PS3.4 B.2.3, as storescp and Orthanc answer)
    assert (other_instance.Status, other_instance.OffendingElement) == (0xA900, SOP_INSTANCE)
    assert (other_class.Status, other_class.OffendingElement) == (0xA900, SOP_CLASS)
    assert node.node.archive.count() == 1


def archived_files(node: RunningNode) -> list[Path]:
    return sorted((node.settings.archive_path / "files").rglob("*.dcm"))


async def test_another_patients_instance_is_refused_and_no_file_is_orphaned(
    start_node: Any, hostile: Any
) -> None:
    # given a node that holds instance X of patient P1 (besides its own one instance)
    node: RunningNode = await start_node(instances=1, peers={"HOSTILE": EVERYTHING})
    uid = "1.2.826.0.1.3680043.8.498.81"
    affected = (CTImageStorage, uid)
    first = instance(1, "P1", SOPInstanceUID=uid)
    assert (await asyncio.to_thread(hostile, node.settings.port, first, affected)).Status == 0
    # when X comes again under patient P2
    second = instance(1, "P2", SOPInstanceUID=uid)
    refused = await asyncio.to_thread(hostile, node.settings.port, second, affected)
    # then it is refused, and the archive still holds P1's
    assert refused.Status == 0x0111, refused
    assert "PatientID" in refused.ErrorComment
    (held,) = [p for p in archived_files(node) if p.stem == uid]
    assert dcmread(held).PatientID == "P1"
    # when P1's X comes again in another study: it replaces the old one, whose file goes
    moved = instance(1, "P1", SOPInstanceUID=uid, StudyInstanceUID="1.2.826.0.1.3680043.8.498.82")
    assert (await asyncio.to_thread(hostile, node.settings.port, moved, affected)).Status == 0
    (held,) = [p for p in archived_files(node) if p.stem == uid]
    assert held.parent.name == "1.2.826.0.1.3680043.8.498.82"
    assert len(archived_files(node)) == 2
    assert node.node.archive.count() == 2


async def test_overwrite_instances_replaces_another_patients_instance_without_orphans(
    start_node: Any, hostile: Any
) -> None:
    # given a node configured to overwrite, holding instance X of patient P1
    node: RunningNode = await start_node(
        instances=1, peers={"HOSTILE": EVERYTHING}, overwrite_instances=True
    )
    uid = "1.2.826.0.1.3680043.8.498.91"
    first = instance(1, "P1", SOPInstanceUID=uid)
    assert (
        await asyncio.to_thread(hostile, node.settings.port, first, (CTImageStorage, uid))
    ).Status == 0
    # when X comes again under P2, in P2's study
    second = instance(1, "P2", SOPInstanceUID=uid)
    stored = await asyncio.to_thread(hostile, node.settings.port, second, (CTImageStorage, uid))
    # then P2's replaces it, and P1's file is gone
    assert stored.Status == 0
    (held,) = [p for p in archived_files(node) if p.stem == uid]
    assert dcmread(held).PatientID == "P2"
    assert len(archived_files(node)) == 2


# -- an archive filled before UIDs were validated --------------------------------------


def smuggle(node: RunningNode, sop_instance_uid: str) -> None:
    """Put an instance with ``sop_instance_uid`` into the node's study, past every check.

    As an archive imported before UIDs were validated holds it: file and index row.
    """
    series = synthetic_uid(node.study_uid, "smuggled")
    ds = ct_instance(patient_id="SMUGGLED", study_uid=node.study_uid, series_uid=series, number=9)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    path = node.settings.archive_path / "smuggled" / f"{len(sop_instance_uid)}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    row = {
        "patient_id": "SMUGGLED",
        "study_instance_uid": node.study_uid,
        "series_instance_uid": series,
        "sop_instance_uid": sop_instance_uid,
        "sop_class_uid": CTImageStorage,
        "instance_number": "9",
        "transfer_syntax_uid": ExplicitVRLittleEndian,
        "path": str(path),
    }
    with sqlite3.connect(node.settings.archive_path / "index.sqlite") as db:
        db.execute(
            f"INSERT INTO instances ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )


def move_completed(events: list[CloudEvent]) -> bool:
    return bool(of_type(events, "dicom.move.completed"))


async def test_instances_with_bad_uids_do_not_poison_a_move(
    tmp_path: Path, amqp_url: str, start_node: Any
) -> None:
    # given a node whose archive already holds two instances with bad SOP Instance UIDs
    with storescp(tmp_path / "received") as peer:
        node: RunningNode = await start_node(
            instances=3, destinations={"STORESCP": peer.port}, peers={"MOVESCU": EVERYTHING}
        )
        smuggle(node, LETTERS_UID)
        smuggle(node, LONG_UID)  # pynetdicom cannot even send it: a failed sub-operation
        # when movescu moves the study to storescp
        output = await movescu(node, "STORESCP")
    events = await read_events(amqp_url, node.source, move_completed, within=60)
    # then the move completes, with its counts, and the 200-character UID out of its list
    (completed,) = of_type(events, "dicom.move.completed")
    data = completed.data
    assert isinstance(data, ev.MoveCompletedData), output
    assert (data.counts.completed, data.counts.failed, data.counts.remaining) == (4, 1, 0)
    assert data.failed_sop_instance_uids == ()
    # and one dicom.message.invalid names it, with its count
    invalid = [e.data for e in of_type(events, "dicom.message.invalid")]
    (left_out,) = [
        d for d in invalid if isinstance(d, ev.MessageInvalidData) and d.message == "C-MOVE-RSP"
    ]
    assert isinstance(left_out, ev.MessageInvalidData)
    assert left_out.count == 1
    assert LONG_UID in left_out.error
    assert left_out.operation == data.operation
    # and the three valid instances have their response events
    received = of_type(events, "dicom.cstore.response.received")
    assert {e.data.affected_sop_instance_uid for e in received} == set(node.instance_uids)  # type: ignore[attr-defined]
