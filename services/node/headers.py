"""What the node reads of a file before it sends it: up to the pixel data, once.

The sender reads every file's header before it associates (``read_headers``). A
retrieve (the Move and Get SCPs) hands pynetdicom a header (``read_header``) for each
instance, and the association's ``send_c_store`` (``send_as_stored``) sends that
header's file: as its bytes when ``payload`` says so, read in full otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dimsebus.services.node.payload import StoredFile, accepted_syntaxes, sends_own_bytes

log = logging.getLogger(__name__)

# A Python attribute, not a DICOM element (lower case: pydicom sets it as such): the
# file a header was read from, which only ``send_as_stored`` acts on.
_HEADER_OF = "dimsebus_header_of"


@dataclass(frozen=True, slots=True)
class Header:
    """A file to send, as its file meta and data set header say."""

    path: Path
    file: StoredFile
    study: str | None
    patient: str | None


_SENDING_TAGS = [
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "PatientID",
    "StudyInstanceUID",
]
"""What sending a file needs of its data set (``Header``, ``stored_file``), the character
set to read them with included: the rest is skipped, not kept (about 20 % of a read)."""


def read_headers(
    files: list[Path], unreadable: list[str], on_progress: Callable[[Path, int | None], None]
) -> Iterator[Header]:
    """The header of each file; one that is not DICOM is noted in ``unreadable`` instead."""
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=_SENDING_TAGS)
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


def read_header(path: Path) -> Dataset:
    """``path`` read up to its pixel data, for ``send_as_stored`` to send as the file.

    pynetdicom's Move and Get SCPs take it as the instance to send: they read its SOP
    Instance UID (for the Failed SOP Instance UID List) and give it to ``send_c_store``.
    """
    header = dcmread(path, stop_before_pixels=True)
    setattr(header, _HEADER_OF, path)
    return header


SendCStore = Callable[..., Dataset]
"""An association's ``send_c_store(dataset, msg_id=..., ...)``."""


def send_as_stored(send: SendCStore, accepted: Set[tuple[str, str]]) -> SendCStore:
    """``send`` that sends each ``read_header``'s file instead of the header.

    As its bytes (``send(path)``) when its own syntax is ``accepted`` for its SOP class
    (``payload.sends_own_bytes``; ``accepted`` is ``payload.accepted_syntaxes`` of the
    association), else read in full and converted by pynetdicom, as before. Anything
    else (a data set read in full, a path) goes to ``send`` unchanged.
    """

    def send_c_store(dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        path = _header_path(dataset)
        if path is None:
            return send(dataset, *args, **kwargs)
        return send_file(send, path, _goes_as_bytes(dataset, accepted), *args, **kwargs)

    return send_c_store


def send_file(send: SendCStore, path: Path, as_bytes: bool, *args: Any, **kwargs: Any) -> Dataset:
    """C-STORE ``path`` through ``send``: its own bytes if ``as_bytes``, else decoded.

    A file pynetdicom refuses to send as its bytes (it checks the file meta and the
    context before it sends anything) is sent the other way.
    """
    if as_bytes:
        try:
            return send(path, *args, **kwargs)
        except (AttributeError, ValueError, InvalidDicomError) as exc:  # nothing was sent
            log.info("%s: sent decoded, not as its bytes: %s", path, exc)
    return send(dcmread(path), *args, **kwargs)


def accepted_by(assoc: Any) -> frozenset[tuple[str, str]]:
    """The (SOP class, transfer syntax) pairs ``assoc`` accepted with the node as SCU."""
    return accepted_syntaxes(
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0]), bool(cx.as_scu))
        for cx in assoc.accepted_contexts
    )


def _header_path(dataset: object) -> Path | None:
    if not isinstance(dataset, Dataset):
        return None
    path = getattr(dataset, _HEADER_OF, None)
    return path if isinstance(path, Path) else None


def _goes_as_bytes(header: Dataset, accepted: Set[tuple[str, str]]) -> bool:
    try:
        return sends_own_bytes(stored_file(header), accepted)
    except AttributeError:  # no SOP class, instance or file meta: pydicom's read decides
        return False
