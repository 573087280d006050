"""Identifiers become archive queries as PS3.4 C.2.2.2 matching says."""

from __future__ import annotations

import pytest

from dimsebus.services.node.query import QueryError, build_query
from dimsebus.services.node.sender import SendError, Target, message_id


def test_universal_keys_are_return_keys_only() -> None:
    query = build_query("STUDY", {"StudyInstanceUID": "", "PatientID": "P1"})
    assert (query.where, query.params) == ("patient_id = ?", ("P1",))
    assert query.return_keys == ("StudyInstanceUID", "PatientID")


@pytest.mark.parametrize(
    ("keyword", "value", "where", "params"),
    [
        ("PatientName", "SMITH*", "patient_name GLOB ?", ("SMITH*",)),
        ("StudyInstanceUID", "1.2\\1.3", "study_instance_uid IN (?, ?)", ("1.2", "1.3")),
        (
            "StudyDate",
            "20260101-20261231",
            "study_date >= ? AND study_date <= ?",
            ("20260101", "20261231"),
        ),
        ("StudyDate", "-20261231", "study_date <= ?", ("20261231",)),
        ("Modality", "CT", "modality = ?", ("CT",)),
    ],
)
def test_matching(keyword: str, value: str, where: str, params: tuple[str, ...]) -> None:
    query = build_query("IMAGE", {keyword: value})
    assert (query.where, query.params) == (where, params)


def test_bad_level_is_named() -> None:
    with pytest.raises(QueryError, match="QueryRetrieveLevel 'FRAME' is not one of"):
        build_query("FRAME", {})


def test_lower_level_key_cannot_select_a_higher_level() -> None:
    with pytest.raises(QueryError, match="SOPInstanceUID is an IMAGE key"):
        build_query("STUDY", {"SOPInstanceUID": "1.2.3"})


def test_target_parses_ae_host_port() -> None:
    assert Target.parse("STORESCP@10.0.0.1:104") == Target("STORESCP", "10.0.0.1", 104)
    for bad in ("STORESCP", "@h:1", "A@h:", "A@h:0", "A@h:70000", "A@:104"):
        with pytest.raises(SendError, match="is not AE@HOST:PORT"):
            Target.parse(bad)


def test_message_ids_count_up_and_wrap_past_65535() -> None:
    assert [message_id(n) for n in (0, 1, 65534, 65535, 65536)] == [1, 2, 65535, 1, 2]
