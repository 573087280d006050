"""Pure: whether the archive takes a data set, and the C-STORE status when it does not.

The archive names its files by UIDs, so a UID is a path component: nothing is
written before every UID that identifies the instance is a valid UID (PS3.5
9.1: 1 to 64 characters, digits and dots, no empty or leading-zero component),
which leaves no room for ``/`` or ``..``. The statuses are PS3.4 B.2.3's, as
dcmtk's storescp and Orthanc answer them:

- 0xC000 *Error: Cannot understand*, with Offending Element (0000,0901): an
  identifying UID is missing or not a valid UID. The instance cannot be
  identified, so nothing about it can be understood; storescp and Orthanc answer
  0xC000 for a data set without SOP Class or Instance UID. It is permanent: the
  same data set fails the same way however often it is sent.
- 0xA900 *Error: Data Set does not match SOP Class*: the data set's SOP Class or
  Instance UID is not the C-STORE-RQ's Affected SOP Class or Instance UID, as
  storescp (``DU_findSOPClassAndInstanceInDataSet``) and Orthanc answer it.
- 0x0111 *Failure: Duplicate SOP Instance* (PS3.7 C.4, a general status that
  pynetdicom's and our status tables know for C-STORE): the SOP Instance is
  already held under another Patient ID. dcm4chee answers its own 0xA778, but
  A7xx reads *Out of Resources*, which SCUs (and the retrier) retry; a conflict
  does not clear by itself.
- 0xA700 *Refused: Out of Resources*: only a real lack of space (ENOSPC, EDQUOT).
- 0x0110 *Failure: Processing failure* (PS3.7 C.4): any other write error
  (permissions, I/O): the node's fault, which an operator can fix, so retryable.

Error Comments (0000,0902) are at most 64 characters (VR LO) and never carry the
peer's values, only the element's name and what is wrong with it.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass

from dimsebus.schemas.dicom import check_uid
from dimsebus.services.errors import DimsebusError

CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900
DUPLICATE_INSTANCE = 0x0111
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110
COMMENT_LIMIT = 64  # Error Comment is LO (PS3.7 E.1, PS3.5 6.2)

IDENTIFYING: dict[str, int] = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
}
"""The UIDs that identify an instance (and name its file), with their tags."""

REQUIRED: dict[str, int] = {**IDENTIFYING, "TransferSyntaxUID": 0x00020010}
"""Every UID the archive needs: the identifying ones, and the file's transfer syntax."""

_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a data set was not stored: a C-STORE status, its Error Comment and element."""

    status: int
    comment: str
    element: int | None = None

    def __post_init__(self) -> None:
        if len(self.comment) > COMMENT_LIMIT:
            object.__setattr__(self, "comment", self.comment[:COMMENT_LIMIT])


class ArchiveError(DimsebusError):
    """A file could not be added to the archive."""


class Refused(ArchiveError):
    """The archive did not take a data set; ``refusal`` says why, as a C-STORE status."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.comment)
        self.refusal = refusal


def tag_text(tag: int) -> str:
    """``(0008,0018)`` for 0x00080018, as PS3.5 writes a tag."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def uid_problem(value: object) -> str | None:
    """What is wrong with ``value`` as one UID (PS3.5 9.1), in a few words; None if nothing."""
    if value is None or value == "":
        return "missing"
    if not isinstance(value, str):
        return "not a single UID"
    try:
        check_uid(value)
    except ValueError as exc:  # "'<value>' is not a valid UID: <why>": keep the why only
        _, colon, why = str(exc).rpartition(": ")
        return why if colon and why else "not a valid UID"
    return None


def identity_refusal(
    values: Mapping[str, object], affected: tuple[str, str] | None = None
) -> Refusal | None:
    """Refuse a data set whose identifying UIDs are not valid UIDs, or not the request's.

    ``values`` are the data set's ``REQUIRED`` elements by keyword; ``affected``
    the C-STORE-RQ's Affected SOP Class and Instance UID (None for an import).
    """
    for keyword, tag in REQUIRED.items():
        problem = uid_problem(values.get(keyword))
        if problem is not None:
            return Refusal(CANNOT_UNDERSTAND, f"{keyword} {tag_text(tag)} {problem}", tag)
    if affected is None:
        return None
    for keyword, expected, name in (
        ("SOPClassUID", affected[0], "Class"),
        ("SOPInstanceUID", affected[1], "Instance"),
    ):
        if values[keyword] != expected:
            tag = IDENTIFYING[keyword]
            comment = f"{keyword} {tag_text(tag)} is not the Affected SOP {name} UID"
            return Refusal(DOES_NOT_MATCH, comment, tag)
    return None


def same_patient(held: str | None, arriving: str | None) -> bool:
    """Whether two Patient IDs are one (absent and empty are the same: no Patient ID)."""
    return (held or "").strip() == (arriving or "").strip()


def overwrite_refusal(
    held: str | None, arriving: str | None, *, overwrite_instances: bool
) -> Refusal | None:
    """Refuse to replace an instance held under another Patient ID, unless configured to.

    ``held`` is the Patient ID the archive holds the SOP Instance UID under,
    ``arriving`` the new data set's. The same patient's instance is replaced.
    """
    if overwrite_instances or same_patient(held, arriving):
        return None
    return Refusal(DUPLICATE_INSTANCE, "SOP Instance already held under another PatientID")


def write_refusal(exc: OSError) -> Refusal:
    """The status of a failed write: out of resources only when space ran out."""
    if exc.errno in _SPACE:
        return Refusal(OUT_OF_RESOURCES, "archive out of space")
    reason = exc.strerror or type(exc).__name__
    return Refusal(PROCESSING_FAILURE, f"archive write failed: {reason}")
