"""Hypothesis strategies for every contract model, drawing only valid values."""

from __future__ import annotations

import datetime as dt
from typing import Any, get_args

from hypothesis import strategies as st

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent, schema_uri
from dimsebus.schemas.status import Service, describe_status

_number = st.one_of(st.just("0"), st.integers(1, 10**12).map(str))
uids = st.lists(_number, min_size=1, max_size=10).map(".".join).filter(lambda uid: len(uid) <= 64)
ae_titles = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"),
    min_size=1,
    max_size=16,
).filter(lambda title: title.strip(" ") != "")
message_ids = st.integers(0, 0xFFFF)
context_ids = st.integers(0, 127).map(lambda n: 2 * n + 1)
statuses = st.integers(0, 0xFFFF)
ports = st.integers(0, 65535)
times = st.datetimes(
    min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
)
hosts = st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,40}\Z")
words = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
labels = st.dictionaries(st.from_regex(r"\A[A-Za-z0-9_.\-/]{1,20}\Z"), words, max_size=4)
counts = st.integers(0, 100_000)

associations = st.builds(
    ev.AssociationRef,
    id=st.uuids(),
    role=st.sampled_from(["requestor", "acceptor"]),
    local_ae_title=ae_titles,
    peer_ae_title=ae_titles,
    peer_host=hosts,
    peer_port=ports,
)
operations = st.builds(ev.Operation, kind=st.sampled_from(["store", "move", "get"]), id=st.uuids())
originators = st.none() | st.builds(ev.MoveOriginator, ae_title=ae_titles, message_id=message_ids)
sub_counts = st.builds(
    ev.SubOperationCounts,
    remaining=st.none() | counts,
    completed=counts,
    failed=counts,
    warning=counts,
)
failed_instances = st.builds(
    ev.FailedInstance,
    sop_instance_uid=uids,
    status=st.none() | statuses,
    reason=words,
    attempts=st.integers(1, 20),
)

_request: dict[str, Any] = {
    "association": associations,
    "presentation_context_id": context_ids,
    "transfer_syntax_uid": uids,
    "message_id": message_ids,
    "affected_sop_class_uid": uids,
    "affected_sop_instance_uid": uids,
    "move_originator": originators,
    "operation": operations,
    "attempt": st.integers(1, 20),
    "labels": labels,
    "requested_at": times,
}


def _response(status: int, service: Service) -> str:
    return describe_status(status, service).category.value


@st.composite
def cstore_received(draw: st.DrawFn) -> ev.CStoreResponseReceivedData:
    status = draw(statuses)
    return ev.CStoreResponseReceivedData(
        **{name: draw(strategy) for name, strategy in _request.items()},
        status=status,
        status_category=_response(status, Service.STORAGE),  # type: ignore[arg-type]
        error_comment=draw(st.none() | words),
        responded_at=draw(times),
    )


cstore_missing = st.builds(
    ev.CStoreResponseMissingData,
    **_request,
    reason=st.sampled_from(["aborted", "dimse_timeout", "connection_lost", "released"]),
    detail=words,
    detected_at=times,
)
_final_statuses = statuses.filter(
    lambda code: describe_status(code, Service.QUERY_RETRIEVE).category.value != "pending"
)


@st.composite
def retrieve_completed(draw: st.DrawFn, move: bool) -> ev.RetrieveCompletedData:
    status = draw(_final_statuses)
    fields: dict[str, Any] = {
        "association": draw(associations),
        "message_id": draw(message_ids),
        "operation": draw(operations),
        "status": status,
        "status_category": _response(status, Service.QUERY_RETRIEVE),
        "error_comment": draw(st.none() | words),
        "counts": draw(sub_counts),
        "failed_sop_instance_uids": tuple(draw(st.lists(uids, max_size=3))),
        "completed_at": draw(times),
    }
    if move:
        return ev.MoveCompletedData(**fields, move_destination=draw(ae_titles))
    return ev.RetrieveCompletedData(**fields)


_retrieve: dict[str, Any] = {
    "association": associations,
    "message_id": message_ids,
    "operation": operations,
    "affected_sop_class_uid": uids,
    "query_level": st.sampled_from(["PATIENT", "STUDY", "SERIES", "IMAGE"]),
    "keys": st.dictionaries(st.from_regex(r"\A[A-Za-z]{1,20}\Z"), words, max_size=3),
    "priority": st.integers(0, 2),
    "requested_at": times,
}
contexts = st.builds(
    ev.PresentationContext,
    id=context_ids,
    abstract_syntax_uid=uids,
    transfer_syntax_uid=st.none() | uids,
    accepted=st.booleans(),
)
_progress: dict[str, Any] = {
    "operation": operations,
    "node_id": words,
    "requestor_ae_title": st.none() | ae_titles,
    "destination_ae_title": st.none() | ae_titles,
    "expected": st.none() | counts,
    "counts": sub_counts,
    "outcome": st.sampled_from(get_args(ev.MoveOutcome)),
    "failed_instances": st.lists(failed_instances, max_size=3).map(tuple),
    "at": times,
    "reason": st.none() | words,
}
progress = st.builds(ev.MoveProgressData, **_progress)
finished = st.builds(ev.MoveFinishedData, **_progress, revision=st.integers(1, 20))
retries = st.builds(
    ev.RetryData,
    operation=operations,
    node_id=words,
    sop_instance_uids=st.lists(uids, min_size=1, max_size=3).map(tuple),
    attempt=st.integers(1, 20),
    reason=words,
    retry_at=st.none() | times,
    status=st.none() | st.integers(0, 0xFFFF),
    destination_ae_title=st.none() | ae_titles,
)
_ended = st.builds(ev.AssociationEndedData, association=associations, at=times)


@st.composite
def move_responses(draw: st.DrawFn) -> ev.MoveResponseData:
    status = draw(statuses)
    category = _response(status, Service.QUERY_RETRIEVE)
    return ev.MoveResponseData(
        association=draw(associations),
        message_id=draw(message_ids),
        operation=draw(operations),
        move_destination=draw(ae_titles),
        attempt=draw(st.integers(1, 20)),
        final=category != "pending",
        status=status,
        status_category=category,  # type: ignore[arg-type]
        error_comment=draw(st.none() | words),
        counts=draw(sub_counts),
        failed_sop_instance_uids=tuple(draw(st.lists(uids, max_size=3))),
        failed_sop_instance_uids_omitted=draw(counts),
        labels=draw(labels),
        responded_at=draw(times),
        source=draw(st.none() | remote_aes),
        study_instance_uid=draw(st.none() | uids),
        sop_instance_uids=draw(st.none() | st.lists(uids, max_size=3).map(tuple)),
    )


remote_aes = st.builds(ev.RemoteAE, ae_title=ae_titles, host=hosts, port=ports, tls=st.booleans())


@st.composite
def move_commands(draw: st.DrawFn) -> ev.MoveCommandData:
    level = draw(st.sampled_from(["STUDY", "SERIES", "IMAGE"]))
    some = st.lists(uids, min_size=1, max_size=3).map(tuple)
    series = {
        "STUDY": st.none(),
        "SERIES": some,
        "IMAGE": st.none() | st.lists(uids, max_size=1).map(tuple),
    }[level]
    instances = some if level == "IMAGE" else st.none()
    return ev.MoveCommandData(
        operation=ev.Operation(kind="move", id=draw(st.uuids())),
        node_id=draw(st.from_regex(r"\A[A-Za-z0-9_.\-]{1,64}\Z")),
        source=ev.RemoteAE(
            ae_title=draw(ae_titles), host=draw(hosts), port=draw(ports), tls=draw(st.booleans())
        ),
        destination_ae_title=draw(ae_titles),
        query_level=level,  # type: ignore[arg-type]
        study_instance_uid=draw(uids),
        series_instance_uids=draw(series),
        sop_instance_uids=draw(instances),
        attempt=draw(st.integers(1, 20)),
        labels=draw(labels),
    )


DATA: dict[type[CloudEvent], st.SearchStrategy[Any]] = {
    ev.MoveResponseReceived: move_responses(),
    ev.CStoreResponseSent: cstore_received(),
    ev.MoveCommand: move_commands(),
    ev.CStoreResponseReceived: cstore_received(),
    ev.CStoreResponseMissing: cstore_missing,
    ev.AssociationEstablished: st.builds(
        ev.AssociationEstablishedData,
        association=associations,
        presentation_contexts=st.lists(contexts, max_size=3).map(tuple),
        max_pdu_length=st.none() | counts,
        at=times,
    ),
    ev.AssociationRejected: st.builds(
        ev.AssociationRejectedData,
        association=associations,
        result=st.sampled_from(["permanent", "transient"]),
        source=st.sampled_from(
            ["service_user", "service_provider_acse", "service_provider_presentation"]
        ),
        reason=st.integers(0, 255),
        reason_text=words,
        at=times,
    ),
    ev.AccessRefused: st.builds(
        ev.AccessRefusedData,
        association=associations,
        service=st.sampled_from(get_args(ev.AccessService)),
        reason=st.sampled_from(get_args(ev.AccessReason)),
        detail=words,
        called_ae_title=st.none() | ae_titles,
        message_id=st.none() | message_ids,
        affected_sop_class_uid=st.none() | uids,
        status=st.none() | statuses,
        refused=st.integers(1, 3),
        suppressed=counts,
        at=times,
    ),
    ev.AssociationReleased: _ended,
    ev.AssociationAborted: st.builds(
        ev.AssociationAbortedData,
        association=associations,
        at=times,
        source=st.sampled_from(["local", "peer", "network"]),
        reason=words,
    ),
    ev.MoveRequested: st.builds(ev.MoveRequestedData, **_retrieve, move_destination=ae_titles),
    ev.MoveCompleted: retrieve_completed(move=True),
    ev.MoveInterrupted: st.builds(
        ev.MoveInterruptedData,
        association=associations,
        message_id=message_ids,
        operation=operations,
        move_destination=ae_titles,
        matched=counts,
        unanswered=counts,
        detail=words,
        interrupted_at=times,
    ),
    ev.GetRequested: st.builds(ev.RetrieveRequestedData, **_retrieve),
    ev.GetCompleted: retrieve_completed(move=False),
    ev.MoveProgressed: progress,
    ev.MoveFinished: finished,
    ev.RetryScheduled: retries,
    ev.RetryExhausted: retries,
    ev.CStoreUnsent: st.builds(
        ev.CStoreUnsentData,
        operation=operations,
        destination_ae_title=ae_titles,
        sop_instance_uids=st.lists(uids, min_size=1, max_size=3).map(tuple),
        attempt=st.integers(1, 20),
        move_originator=originators,
        labels=labels,
        reason=st.sampled_from(get_args(ev.UnsentReason)),
        detail=words,
        at=times,
        source=st.none() | remote_aes,
        study_instance_uid=st.none() | uids,
    ),
    ev.MessageInvalid: st.builds(
        ev.MessageInvalidData,
        message=st.sampled_from(["C-STORE-RSP", "C-STORE-RQ", "A-ASSOCIATE"]),
        association_id=st.none() | st.uuids(),
        message_id=st.none() | message_ids,
        affected_sop_instance_uid=st.none() | words,
        operation=st.none() | operations,
        error=words.filter(bool),
        fields=st.dictionaries(st.from_regex(r"\A[A-Za-z]{1,30}\Z"), words, max_size=5),
        at=times,
    ),
    ev.ResendSubOperations: st.builds(
        ev.ResendData,
        operation=operations,
        node_id=st.from_regex(r"\A[A-Za-z0-9_.\-]{1,64}\Z"),
        labels=labels,
        sop_instance_uids=st.lists(uids, min_size=1, max_size=3).map(tuple),
        destination_ae_title=ae_titles,
        move_originator=originators,
        attempt=st.integers(1, 20),
    )
    | st.builds(  # a pull's: C-MOVE again from the archive (source), in the study
        ev.ResendData,
        operation=st.builds(ev.Operation, kind=st.just("move"), id=st.uuids()),
        node_id=st.from_regex(r"\A[A-Za-z0-9_.\-]{1,64}\Z"),
        sop_instance_uids=st.lists(uids, min_size=1, max_size=3).map(tuple),
        destination_ae_title=ae_titles,
        move_originator=st.none(),
        attempt=st.integers(2, 20),
        source=remote_aes,
        study_instance_uid=uids,
    ),
    ev.ActionRequested: st.builds(
        ev.ActionRequestedData,
        action=st.sampled_from(get_args(ev.ActionName)),
        operation=st.builds(ev.Operation, kind=st.just("move"), id=st.uuids()),
        node_id=st.from_regex(r"\A[A-Za-z0-9_.\-]{1,64}\Z"),
        instances=st.none() | counts,
        remote_address=hosts,
        session=st.from_regex(r"\A[0-9a-f]{16}\Z"),
        at=times,
    ),
}


def envelopes(model: type[CloudEvent]) -> st.SearchStrategy[CloudEvent]:
    """Valid events of ``model``: any envelope around any valid data."""
    return st.builds(
        model,
        id=st.uuids(),
        source=st.from_regex(r"\Adimsebus://node/[a-z0-9-]{1,20}\Z"),
        time=times,
        subject=words.filter(bool),
        dataschema=st.just(schema_uri(model.model_fields["type"].default)),
        data=DATA[model],
    )
