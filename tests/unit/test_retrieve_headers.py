"""A retrieve yields headers; ``send_as_stored`` sends each header's file in their place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dimsebus.services.node import headers
from dimsebus.services.node.synthetic import ct_instance


class Peer:
    """A ``send_c_store`` that records what it was given; refuses paths if told to."""

    def __init__(self, refuse_paths: bool = False) -> None:
        self.sent: list[tuple[Any, dict[str, Any]]] = []
        self.refuse_paths = refuse_paths

    def send_c_store(self, dataset: Any, **kwargs: Any) -> Dataset:
        if self.refuse_paths and isinstance(dataset, Path):
            raise ValueError("no presentation context for the file's own syntax")
        self.sent.append((dataset, kwargs))
        response = Dataset()
        response.Status = 0
        return response


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    ds = ct_instance(patient_id="P", study_uid="1.2.3", series_uid="1.2.3.4", number=1, rows=32)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_header_stops_before_the_pixels_and_names_its_file(stored: Path) -> None:
    header = headers.read_header(stored)
    assert "PixelData" not in header
    assert header.SOPInstanceUID == dcmread(stored).SOPInstanceUID


def test_a_header_in_an_accepted_syntax_is_sent_as_its_file(stored: Path) -> None:
    # given a peer that accepted the file's own syntax for its SOP class
    peer = Peer()
    send = headers.send_as_stored(peer.send_c_store, {(CTImageStorage, ExplicitVRLittleEndian)})
    # when the Move SCP sends the header it was yielded
    send(headers.read_header(stored), msg_id=5, originator_aet="MOVESCU")
    # then the file's path is sent, with the SCP's arguments
    assert peer.sent == [(stored, {"msg_id": 5, "originator_aet": "MOVESCU"})]


def test_a_header_in_another_syntax_is_sent_read_in_full(stored: Path) -> None:
    peer = Peer()
    send = headers.send_as_stored(peer.send_c_store, {(CTImageStorage, ImplicitVRLittleEndian)})
    send(headers.read_header(stored), msg_id=5)
    ((dataset, kwargs),) = peer.sent
    assert isinstance(dataset, Dataset)
    assert "PixelData" in dataset
    assert kwargs == {"msg_id": 5}


def test_a_file_pynetdicom_refuses_to_send_as_bytes_is_sent_read_in_full(stored: Path) -> None:
    peer = Peer(refuse_paths=True)
    send = headers.send_as_stored(peer.send_c_store, {(CTImageStorage, ExplicitVRLittleEndian)})
    send(headers.read_header(stored), msg_id=5)
    ((dataset, _),) = peer.sent
    assert isinstance(dataset, Dataset)
    assert "PixelData" in dataset


def test_anything_but_a_header_is_sent_unchanged(stored: Path) -> None:
    # a whole data set (Without Bulk Data: pynetdicom took the bulk data out), or a path
    peer = Peer()
    send = headers.send_as_stored(peer.send_c_store, {(CTImageStorage, ExplicitVRLittleEndian)})
    whole = ct_instance(patient_id="P", study_uid="1.2.3", series_uid="1.2.3.4", number=2)
    send(whole, msg_id=1)
    send(stored, msg_id=2)
    assert [dataset for dataset, _ in peer.sent] == [whole, stored]
    assert peer.sent[0][0] is whole
