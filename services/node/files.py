"""The archive's folder of files: where an instance's file goes, written whole or not at all.

A file is named by the instance's UIDs only after they were validated
(``dimsebus.services.node.admission``), and its path is checked to resolve inside the
folder before anything is written (a symlink could still lead out). It is
written under a name of its own first and moved into place, so that a failed
or refused write leaves neither a partial file nor the old one damaged.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset

from dimsebus.services.node import admission
from dimsebus.services.node.admission import Refused

log = logging.getLogger(__name__)


class ArchiveFiles:
    """The files under ``folder``, one per instance: ``<study>/<instance>.dcm``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path_of(self, study_uid: str, instance_uid: str) -> Path:
        """The file of an instance whose UIDs are valid, or ``Refused`` if it leads out."""
        path = self.folder / study_uid / f"{instance_uid}.dcm"
        if not self.holds(path):  # UIDs hold no '/' or '..', but a symlink could lead out
            raise Refused(admission.Refusal(admission.PROCESSING_FAILURE, "path outside archive"))
        return path

    def holds(self, path: Path) -> bool:
        """Whether ``path`` resolves to a place inside the folder."""
        return path.resolve().is_relative_to(self.folder.resolve())

    def stage(self, dataset: Dataset, path: Path) -> Path:
        """Write ``dataset`` as a DICOM file beside ``path``, under a name of its own."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, name = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.stem}.", suffix=".part"
            )
        except OSError as exc:
            raise Refused(admission.write_refusal(exc)) from exc
        staged = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as out:
                dataset.save_as(out, enforce_file_format=True)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise Refused(admission.write_refusal(exc)) from exc
        except Exception as exc:  # pydicom cannot encode what the peer sent
            staged.unlink(missing_ok=True)
            log.warning("cannot write data set %s: %s", path.stem, exc)
            refusal = admission.Refusal(admission.CANNOT_UNDERSTAND, "data set cannot be encoded")
            raise Refused(refusal) from exc
        return staged

    @staticmethod
    def place(staged: Path, path: Path) -> None:
        """Move a staged file into place (atomically, replacing the file there)."""
        try:
            os.replace(staged, path)
        except OSError as exc:
            raise Refused(admission.write_refusal(exc)) from exc

    def discard(self, path: Path) -> None:
        """Remove a replaced instance's file, if it is in the folder (old index rows may not be)."""
        if not self.holds(path):
            log.warning("replaced instance's file %s is outside the archive: left alone", path)
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove replaced file %s: %s", path, exc)


def identifiers(dataset: Dataset) -> dict[str, object]:
    """The data set's identifying UIDs and its transfer syntax, as read (None if absent)."""
    meta = getattr(dataset, "file_meta", None) or Dataset()
    found = {keyword: _read(dataset, keyword) for keyword in admission.IDENTIFYING}
    found["TransferSyntaxUID"] = _read(meta, "TransferSyntaxUID")
    return found


def _read(dataset: Dataset, keyword: str) -> object:
    try:
        return dataset.get(keyword)
    except Exception:  # a peer's bytes that do not decode (whatever pydicom raises): no UID
        return b""
