"""The node as Move SCU, its pure part: identifiers, responses as events, stores matched."""

from __future__ import annotations

import datetime as dt
from uuid import UUID

import pytest
from pydantic import ValidationError

from dimsebus.schemas import events as ev
from dimsebus.schemas.limits import MAX_UIDS
from dimsebus.services.node import moves
from dimsebus.services.node.capture import Stamp

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = f"{STUDY}.1"
AT = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)
STAMP = Stamp(UUID(int=99), AT, "dimsebus://node/n1")
ASSOCIATION = ev.AssociationRef(
    id=UUID(int=7),
    role="requestor",
    local_ae_title="DIMSEBUS",
    peer_ae_title="QRSCP",
    peer_host="127.0.0.1",
    peer_port=104,
)


def command(level: str = "STUDY", **keys: object) -> ev.MoveCommandData:
    return ev.MoveCommandData.model_validate(
        {
            "operation": {"kind": "move", "id": UUID(int=1)},
            "node_id": "n1",
            "source": {"ae_title": "QRSCP", "host": "127.0.0.1", "port": 104},
            "destination_ae_title": "STORESCP",
            "query_level": level,
            "study_instance_uid": STUDY,
            "labels": {"job": "j1"},
            **keys,
        }
    )


def test_a_study_move_names_the_study_only() -> None:
    identifier = moves.move_identifier(command())
    assert identifier.QueryRetrieveLevel == "STUDY"
    assert identifier.StudyInstanceUID == STUDY
    assert "SeriesInstanceUID" not in identifier
    assert "SOPInstanceUID" not in identifier


def test_a_series_move_lists_its_series_as_a_list_of_uids() -> None:
    data = command("SERIES", series_instance_uids=[SERIES, f"{STUDY}.2"])
    identifier = moves.move_identifier(data)
    assert identifier.QueryRetrieveLevel == "SERIES"
    assert list(identifier.SeriesInstanceUID) == [SERIES, f"{STUDY}.2"]


def test_an_image_move_names_its_instances_and_its_series() -> None:
    data = command(
        "IMAGE", series_instance_uids=[SERIES], sop_instance_uids=[f"{SERIES}.1", f"{SERIES}.2"]
    )
    identifier = moves.move_identifier(data)
    assert identifier.QueryRetrieveLevel == "IMAGE"
    assert identifier.SeriesInstanceUID == SERIES
    assert list(identifier.SOPInstanceUID) == [f"{SERIES}.1", f"{SERIES}.2"]


@pytest.mark.parametrize(
    ("level", "keys", "named"),
    [
        ("STUDY", {"series_instance_uids": [SERIES]}, "query_level STUDY"),
        ("SERIES", {}, "query_level SERIES"),
        ("IMAGE", {"series_instance_uids": [SERIES]}, "query_level IMAGE"),
        (
            "IMAGE",
            {"sop_instance_uids": [f"{SERIES}.1"], "series_instance_uids": [SERIES, STUDY]},
            "at most one series",
        ),
        ("STUDY", {"operation": {"kind": "store", "id": UUID(int=1)}}, "operation.kind"),
    ],
)
def test_a_command_whose_keys_do_not_fit_its_level_is_refused(
    level: str, keys: dict[str, object], named: str
) -> None:
    with pytest.raises(ValidationError, match=named):
        command(level, **keys)


def test_the_level_follows_the_arguments_given() -> None:
    assert moves.query_level(STUDY, [], []) == "STUDY"
    assert moves.query_level(STUDY, [SERIES], []) == "SERIES"
    assert moves.query_level(STUDY, [SERIES], [f"{SERIES}.1"]) == "IMAGE"
    assert moves.query_level(STUDY, [], [f"{SERIES}.1"]) == "IMAGE"
    with pytest.raises(moves.MoveCommandError, match="--study"):
        moves.query_level(None, [SERIES], [])
    with pytest.raises(moves.MoveCommandError, match="--series"):
        moves.query_level(STUDY, [SERIES, STUDY], [f"{SERIES}.1"])


def test_message_ids_skip_the_open_moves_and_wrap() -> None:
    assert moves.next_message_id(0, set()) == 1
    assert moves.next_message_id(1, {2, 3}) == 4
    assert moves.next_message_id(0xFFFF, {1}) == 2


def test_a_pending_response_carries_the_counts_and_no_uids() -> None:
    # given a pending C-MOVE-RSP
    response = moves.MoveResponse(0xFF00, 8, 2, 0, 0, failed_uids=(f"{SERIES}.9",))
    # when it becomes an event
    event = moves.response_event(command(), ASSOCIATION, 5, response, STAMP)
    # then it is pending, tied to the operation, with the counts so far
    assert event.type == "dicom.move.response.received"
    assert event.routing_key == "dicom.move.response.received.pending"
    assert event.subject == str(UUID(int=1))
    assert event.correlation_id == str(UUID(int=1))
    data = event.data
    assert (data.final, data.status_category, data.message_id) == (False, "pending", 5)
    assert data.counts == ev.SubOperationCounts(remaining=8, completed=2)
    assert data.failed_sop_instance_uids == ()
    assert data.labels == {"job": "j1"}
    # and names the archive and the study, where a re-issued C-MOVE would go
    assert data.source == command().source
    assert data.study_instance_uid == STUDY


def test_the_final_response_lists_the_failed_instances_capped() -> None:
    # given a final response with more failed instances than an event lists
    failed = tuple(f"{SERIES}.{n}" for n in range(MAX_UIDS + 5))
    response = moves.MoveResponse(0xB000, 0, 1, len(failed), 0, "some failed", failed)
    # when it becomes an event
    data = moves.response_event(command(), ASSOCIATION, 5, response, STAMP).data
    # then it is final, a warning, lists the first ones and counts the rest
    assert (data.final, data.status_category, data.error_comment) == (
        True,
        "warning",
        "some failed",
    )
    assert data.failed_sop_instance_uids == failed[:MAX_UIDS]
    assert data.failed_sop_instance_uids_omitted == 5


def test_a_refused_move_is_a_final_failure() -> None:
    response = moves.MoveResponse(0xA801, None, None, None, None)
    data = moves.response_event(command(), ASSOCIATION, 5, response, STAMP).data
    assert (data.final, data.status_category, data.counts.remaining) == (True, "failure", None)


@pytest.mark.parametrize(
    ("ae_title", "message_id", "matched"),
    [
        ("DIMSEBUS", 5, True),
        ("DIMSEBUS  ", 5, True),  # AE titles are padded with spaces on the wire
        ("DIMSEBUS", 6, False),  # another C-MOVE's message id
        ("OTHER", 5, False),  # another originator's C-MOVE with the same id
        (None, None, False),  # not a sub-operation of any C-MOVE
        ("", 5, False),
    ],
)
def test_a_received_store_belongs_to_the_nodes_move_by_originator_and_message_id(
    ae_title: str | None, message_id: int | None, matched: bool
) -> None:
    data = command()
    found = moves.move_of_store("DIMSEBUS", ae_title, message_id, {5: data})
    assert (found is data) is matched


def test_the_answer_to_a_moves_store_is_an_event_of_the_move() -> None:
    # given a C-STORE-RQ received for the node's C-MOVE 5, refused for want of room
    store = moves.ReceivedStore(
        association=ASSOCIATION.model_copy(update={"role": "acceptor"}),
        presentation_context_id=1,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        message_id=3,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        affected_sop_instance_uid=f"{SERIES}.1",
        originator_message_id=5,
        requested_at=AT,
        status=0xA700,
        error_comment="no space",
    )
    # when it becomes an event
    event = moves.answered_event(command(attempt=2), store, STAMP, "DIMSEBUS")
    # then it is a failure of the move's operation, with its attempt and originator
    assert event.type == "dicom.cstore.response.sent"
    assert event.routing_key == "dicom.cstore.response.sent.failure"
    data = event.data
    assert data.operation == ev.Operation(kind="move", id=UUID(int=1))
    assert data.move_originator == ev.MoveOriginator(ae_title="DIMSEBUS", message_id=5)
    assert (data.attempt, data.status, data.error_comment) == (2, 0xA700, "no space")


def test_instances_without_their_series_are_moved_one_move_per_series() -> None:
    # given a re-issued IMAGE-level move of 3 instances the archive holds in 2 series
    a, b = f"{STUDY}.2", f"{STUDY}.3"
    found = {f"{a}.1": a, f"{a}.2": a, f"{b}.1": b, f"{b}.9": b}
    data = command("IMAGE", sop_instance_uids=[f"{b}.1", f"{a}.1", f"{a}.2"], attempt=2)
    # when they are grouped by the series the archive answered
    split = moves.by_series(data, found)
    # then one move per series, each naming its series and only the instances asked for
    assert [(m.series_instance_uids, m.sop_instance_uids) for m in split] == [
        ((a,), (f"{a}.1", f"{a}.2")),
        ((b,), (f"{b}.1",)),
    ]
    assert {(m.operation, m.attempt, m.destination_ae_title) for m in split} == {
        (data.operation, 2, "STORESCP")
    }


def test_an_instance_the_archive_does_not_hold_is_named() -> None:
    data = command("IMAGE", sop_instance_uids=[f"{SERIES}.1", f"{SERIES}.7"])
    with pytest.raises(
        moves.MoveCommandError, match=rf"1 instance\(s\) not in study .*{SERIES}\.7"
    ):
        moves.by_series(data, {f"{SERIES}.1": SERIES})


def test_a_first_attempt_spanning_several_series_is_refused() -> None:
    data = command("IMAGE", sop_instance_uids=[f"{STUDY}.2.1", f"{STUDY}.3.1"])
    found = {f"{STUDY}.2.1": f"{STUDY}.2", f"{STUDY}.3.1": f"{STUDY}.3"}
    with pytest.raises(moves.MoveCommandError, match="in 2 series"):
        moves.by_series(data, found)


def test_the_finds_ask_for_the_series_then_their_instances() -> None:
    series = moves.series_query(STUDY)
    assert (series.QueryRetrieveLevel, series.StudyInstanceUID, series.SeriesInstanceUID) == (
        "SERIES",
        STUDY,
        "",
    )
    image = moves.instance_query(STUDY, SERIES)
    assert (image.QueryRetrieveLevel, image.SeriesInstanceUID, image.SOPInstanceUID) == (
        "IMAGE",
        SERIES,
        "",
    )
