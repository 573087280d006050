"""C-FIND/C-MOVE/C-GET identifiers -> SQL over the archive index (PS3.4 C.2.2.2, C.6).

Pure: an identifier is a mapping keyword -> value (str); the result is a SQL
WHERE clause with parameters. Matching follows PS3.4 C.2.2.2: universal
(empty), single value, wildcard (``*`` and ``?``), list of UIDs (``\\``) and
range (``A-B``) for dates and times.
"""

from __future__ import annotations

from dataclasses import dataclass

from dimsebus.services.errors import DimsebusError

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

# keyword -> (column, level it belongs to)
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "PatientID": ("patient_id", "PATIENT"),
    "PatientName": ("patient_name", "PATIENT"),
    "PatientBirthDate": ("patient_birth_date", "PATIENT"),
    "PatientSex": ("patient_sex", "PATIENT"),
    "StudyInstanceUID": ("study_instance_uid", "STUDY"),
    "StudyDate": ("study_date", "STUDY"),
    "StudyTime": ("study_time", "STUDY"),
    "AccessionNumber": ("accession_number", "STUDY"),
    "StudyID": ("study_id", "STUDY"),
    "StudyDescription": ("study_description", "STUDY"),
    "SeriesInstanceUID": ("series_instance_uid", "SERIES"),
    "Modality": ("modality", "SERIES"),
    "SeriesNumber": ("series_number", "SERIES"),
    "SOPInstanceUID": ("sop_instance_uid", "IMAGE"),
    "SOPClassUID": ("sop_class_uid", "IMAGE"),
    "InstanceNumber": ("instance_number", "IMAGE"),
}
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_UID_KEYS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
_RANGE_KEYS = {"StudyDate", "StudyTime", "PatientBirthDate"}


class QueryError(DimsebusError):
    """An identifier the archive cannot match (bad level or key); answered 0xA900/0xC000."""


@dataclass(frozen=True, slots=True)
class Query:
    """A level and the SQL that selects its matching rows."""

    level: str
    where: str
    params: tuple[str, ...]
    return_keys: tuple[str, ...]


def build_query(level: str, identifier: dict[str, str]) -> Query:
    """The archive query for ``identifier`` at ``level``; unknown keys are returned empty."""
    if level not in LEVELS:
        raise QueryError(f"QueryRetrieveLevel {level!r} is not one of {', '.join(LEVELS)}")
    depth = LEVELS.index(level)
    clauses, params = [], []
    for keyword, value in identifier.items():
        if keyword not in ATTRIBUTES or not value:
            continue
        column, key_level = ATTRIBUTES[keyword]
        if LEVELS.index(key_level) > depth:
            raise QueryError(f"{keyword} is an {key_level} key; it cannot select at {level} level")
        clause, values = _match(keyword, column, value)
        clauses.append(clause)
        params.extend(values)
    return Query(level, " AND ".join(clauses) or "1", tuple(params), tuple(identifier))


def _match(keyword: str, column: str, value: str) -> tuple[str, list[str]]:
    if keyword in _UID_KEYS and "\\" in value:
        uids = value.split("\\")
        return f"{column} IN ({', '.join('?' * len(uids))})", uids
    if keyword in _RANGE_KEYS and "-" in value:
        low, _, high = value.partition("-")
        parts, values = [], []
        if low:
            parts.append(f"{column} >= ?")
            values.append(low)
        if high:
            parts.append(f"{column} <= ?")
            values.append(high)
        return " AND ".join(parts) or "1", values
    if "*" in value or "?" in value:
        return f"{column} GLOB ?", [value.replace("[", "[[]")]
    return f"{column} = ?", [value]
