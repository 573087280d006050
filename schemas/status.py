"""The DIMSE status table: code -> category, meaning, and whether a retry can help.

Sources: PS3.7 Annex C (general statuses), PS3.4 B.2.3 (Storage) and PS3.4
C.4.1.1.4, C.4.2.1.5, C.4.3.1.4 (Query/Retrieve C-FIND, C-MOVE, C-GET).
The same code means different things in different services (0xB000 is
"Coercion of Data Elements" for C-STORE and "Sub-operations Complete - One or
more Failures" for C-MOVE), so every lookup names its service.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum


class StatusCategory(StrEnum):
    """The status classes of PS3.7 C.1."""

    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"
    CANCEL = "cancel"
    PENDING = "pending"


class FailureKind(StrEnum):
    """Whether repeating the request can help: ``transient`` failures may clear."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


class Service(StrEnum):
    """The DIMSE service whose response carries the status."""

    STORAGE = "storage"
    QUERY_RETRIEVE = "query_retrieve"


@dataclass(frozen=True, slots=True)
class StatusInfo:
    """What a status code means in one service."""

    code: int
    category: StatusCategory
    description: str
    failure_kind: FailureKind | None = None

    @property
    def retryable(self) -> bool:
        """True when a retry of the same request can succeed (PS3.4 B.2.3 'Refused')."""
        return self.failure_kind is FailureKind.TRANSIENT

    @property
    def label(self) -> str:
        """The code as DICOM writes it, e.g. ``0xA700``."""
        return f"0x{self.code:04X}"


_S, _W, _F, _C, _P = (
    StatusCategory.SUCCESS,
    StatusCategory.WARNING,
    StatusCategory.FAILURE,
    StatusCategory.CANCEL,
    StatusCategory.PENDING,
)
_T, _X = FailureKind.TRANSIENT, FailureKind.PERMANENT

# (first code, last code, category, failure kind, description); first match wins.
Row = tuple[int, int, StatusCategory, FailureKind | None, str]

GENERAL: tuple[Row, ...] = (
    (0x0000, 0x0000, _S, None, "Success"),
    (0x0001, 0x0001, _W, None, "Warning: Requested optional Attributes are not supported"),
    (0x0105, 0x0105, _F, _X, "Failure: No such attribute"),
    (0x0106, 0x0106, _F, _X, "Failure: Invalid attribute value"),
    (0x0107, 0x0107, _W, None, "Warning: Attribute list error"),
    (0x0110, 0x0110, _F, _T, "Failure: Processing failure"),
    (0x0111, 0x0111, _F, _X, "Failure: Duplicate SOP Instance"),
    (0x0112, 0x0112, _F, _X, "Failure: No such SOP Instance"),
    (0x0113, 0x0113, _F, _X, "Failure: No such event type"),
    (0x0114, 0x0114, _F, _X, "Failure: No such argument"),
    (0x0115, 0x0115, _F, _X, "Failure: Invalid argument value"),
    (0x0116, 0x0116, _W, None, "Warning: Attribute Value Out of Range"),
    (0x0117, 0x0117, _F, _X, "Failure: Invalid object instance"),
    (0x0118, 0x0118, _F, _X, "Failure: No such SOP Class"),
    (0x0119, 0x0119, _F, _X, "Failure: Class-instance conflict"),
    (0x0120, 0x0120, _F, _X, "Failure: Missing attribute"),
    (0x0121, 0x0121, _F, _X, "Failure: Missing attribute value"),
    (0x0122, 0x0122, _F, _X, "Refused: SOP Class not supported"),
    (0x0123, 0x0123, _F, _X, "Failure: No such action"),
    (0x0124, 0x0124, _F, _X, "Refused: Not authorized"),
    (0x0210, 0x0210, _F, _T, "Failure: Duplicate invocation"),
    (0x0211, 0x0211, _F, _X, "Failure: Unrecognized operation"),
    (0x0212, 0x0212, _F, _X, "Failure: Mistyped argument"),
    (0x0213, 0x0213, _F, _T, "Failure: Resource limitation"),
)

STORAGE: tuple[Row, ...] = (
    (0xA700, 0xA7FF, _F, _T, "Refused: Out of Resources"),
    (0xA900, 0xA9FF, _F, _X, "Error: Data Set does not match SOP Class"),
    (0xB000, 0xB000, _W, None, "Warning: Coercion of Data Elements"),
    (0xB006, 0xB006, _W, None, "Warning: Elements Discarded"),
    (0xB007, 0xB007, _W, None, "Warning: Data Set does not match SOP Class"),
    (0xC000, 0xCFFF, _F, _X, "Error: Cannot understand"),
    # C-STORE has no Cancel or Pending responses (PS3.4 B.2.3); a peer that
    # sends one has not stored the instance.
    (0xFE00, 0xFE00, _C, None, "Cancel (not a C-STORE status)"),
    (0xFF00, 0xFF01, _F, _X, "Failure: Pending is not a valid C-STORE response status"),
)

QUERY_RETRIEVE: tuple[Row, ...] = (
    (0xA700, 0xA700, _F, _T, "Refused: Out of Resources"),
    (0xA701, 0xA701, _F, _T, "Refused: Out of Resources - Unable to calculate number of matches"),
    (0xA702, 0xA702, _F, _T, "Refused: Out of Resources - Unable to perform sub-operations"),
    (0xA703, 0xA7FF, _F, _T, "Refused: Out of Resources"),
    (0xA801, 0xA801, _F, _X, "Refused: Move Destination unknown"),
    (0xA900, 0xA9FF, _F, _X, "Error: Identifier does not match SOP Class"),
    (0xAA00, 0xAA00, _F, _X, "Failed: None of the Frames requested were found"),
    (0xB000, 0xB000, _W, None, "Warning: Sub-operations Complete - One or more Failures"),
    (0xC000, 0xCFFF, _F, _X, "Error: Unable to process"),
    (0xFE00, 0xFE00, _C, None, "Cancel: Sub-operations terminated due to Cancel Indication"),
    (0xFF00, 0xFF00, _P, None, "Pending: Sub-operations or matches are continuing"),
    (0xFF01, 0xFF01, _P, None, "Pending: Matches are continuing - Optional Keys not supported"),
)

# Codes in no table are classified by their range (PS3.7 C.1), never raised.
BY_RANGE: tuple[Row, ...] = (
    (0x0100, 0x02FF, _F, _X, "Failure (unknown general status)"),
    (0xA000, 0xAFFF, _F, _X, "Refused or Error (unknown service status)"),
    (0xB000, 0xBFFF, _W, None, "Warning (unknown service status)"),
    (0x0000, 0xFFFF, _F, _X, "Failure (unknown status)"),
)

_SERVICE_ROWS = {Service.STORAGE: STORAGE, Service.QUERY_RETRIEVE: QUERY_RETRIEVE}


@functools.lru_cache(maxsize=4096)  # every event validates its status this way, some twice
def describe_status(code: int, service: Service = Service.STORAGE) -> StatusInfo:
    """Classify a DIMSE status code as ``service`` defines it; unknown codes by range."""
    if not 0 <= code <= 0xFFFF:
        raise ValueError(f"{code} is not a valid status: it is not 0 to 65535")
    for rows in (_SERVICE_ROWS[service], GENERAL, BY_RANGE):
        for first, last, category, kind, description in rows:
            if first <= code <= last:
                return StatusInfo(code, category, description, kind)
    raise AssertionError("BY_RANGE covers every code")  # pragma: no cover
