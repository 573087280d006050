"""What the sender reads of each file before it associates: up to the pixel data, once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dimsebus.services.node.payload import StoredFile


@dataclass(frozen=True, slots=True)
class Header:
    """A file to send, as its file meta and data set header say."""

    path: Path
    file: StoredFile
    study: str | None
    patient: str | None


def read_headers(
    files: list[Path], unreadable: list[str], on_progress: Callable[[Path, int | None], None]
) -> Iterator[Header]:
    """The header of each file; one that is not DICOM is noted in ``unreadable`` instead."""
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            yield Header(
                path, stored_file(ds), _text(ds.get("StudyInstanceUID")), _text(ds.get("PatientID"))
            )
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            unreadable.append(f"{path}: {exc}")
            on_progress(path, None)


def stored_file(ds: Dataset) -> StoredFile:
    """The facts ``payload`` decides on, from a file read up to its pixel data."""
    meta = ds.file_meta
    return StoredFile(
        sop_class=str(ds.SOPClassUID),
        sop_instance=str(ds.SOPInstanceUID),
        transfer_syntax=str(meta.TransferSyntaxUID),
        meta_sop_class=_text(meta.get("MediaStorageSOPClassUID")),
        meta_sop_instance=_text(meta.get("MediaStorageSOPInstanceUID")),
        encoding=ds.original_encoding,
    )


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None
