"""Fuzzing the capture and the contract: nothing a peer sends crashes the node or loses its event.

Odd values become one event that the contract accepts: the response, a
missing response (``invalid_response``) or ``dicom.message.invalid``. A body
that is not a valid event is a ``ValidationError`` (``InvalidEvent`` to the
consumer runner, which parks it), never any other exception.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.events import Event
from pynetdicom.transport import AddressInformation

from dimsebus.schemas import events as ev
from dimsebus.schemas.dicom import check_ae_title
from dimsebus.schemas.envelope import schema_uri
from dimsebus.services.bus.codec import decode_body
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.clock import new_id
from dimsebus.services.errors import InvalidEvent
from dimsebus.services.node import fact_events
from dimsebus.services.node import storepair as exchange
from dimsebus.services.node.association import command_values, read_values, tags_of
from dimsebus.services.node.capture import SentStore, Stamp, StoreResponse, answer_event
from dimsebus.services.node.capture_shell import Capture
from dimsebus.services.node.salvage import Unreadable, association_ref, status_problem
from tests import strategies as valid

FUZZ = settings(max_examples=200, deadline=None)
OUTCOMES = {
    "dicom.cstore.response.received",
    "dicom.cstore.response.missing",
    "dicom.message.invalid",
}
# pydicom warns about every invalid value it decodes, which is the point here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# -- what a peer (or a file the node sends) can hold -----------------------------------

long_text = st.text(max_size=8).map(lambda chunk: chunk * 700)
odd_text = st.text(max_size=40) | long_text
odd_values = (
    st.none()
    | st.integers()
    | st.booleans()
    | st.floats()
    | odd_text
    | st.binary(max_size=20)
    | st.lists(st.integers(-2, 0x10001), max_size=3)
    | st.lists(st.text(max_size=10), max_size=3)
    | st.builds(Unreadable, st.text(max_size=40))
)
maybe_uids = valid.uids | odd_text
commands = st.fixed_dictionaries(
    {},
    optional={
        "Status": valid.statuses | odd_values,
        "ErrorComment": odd_values,
        "AffectedSOPInstanceUID": valid.uids | odd_values,
        "AffectedSOPClassUID": valid.uids | odd_values,
        "MessageIDBeingRespondedTo": valid.message_ids | odd_values,
    },
)
sent_stores = st.builds(
    SentStore,
    association=valid.associations,
    presentation_context_id=valid.context_ids | st.integers(-1, 300),
    transfer_syntax_uid=maybe_uids,
    message_id=valid.message_ids | st.integers(-1, 0x10001),
    affected_sop_class_uid=maybe_uids,
    affected_sop_instance_uid=maybe_uids,
    move_originator=valid.originators,
    operation=valid.operations,
    attempt=st.integers(0, 5),
    labels=valid.labels | st.dictionaries(odd_text, odd_text, max_size=2),
    requested_at=valid.times,
    study_instance_uid=st.none() | maybe_uids,
    patient_id=st.none() | st.text(max_size=200),
)
stamps = st.builds(Stamp, id=st.uuids(), time=valid.times, source=st.just("dimsebus://node/fuzz"))


def _facts_are_valid(sent: SentStore) -> bool:
    try:
        ev.CStoreRequestFacts.model_validate(sent.facts())
    except ValidationError:
        return False
    return True


@FUZZ
@given(sent=sent_stores, command=commands, stamp=stamps, joined=st.booleans())
def test_any_response_becomes_one_event_that_reads_back_unchanged(
    sent: SentStore, command: dict[str, object], stamp: Stamp, joined: bool
) -> None:
    # given any request the node sent, and any C-STORE-RSP command set
    response = StoreResponse.of(command)
    # when the capture answers it, joined to its request or to none
    event = answer_event(sent if joined else None, response, sent.association.id, stamp)
    # then it is one event of the three outcomes, which reads back unchanged
    assert event.type in OUTCOMES
    assert ev.parse_event(event.model_dump_json()) == event
    # and a response with an unusable Status is never reported as received
    if status_problem(response.status) is not None:
        assert not isinstance(event, ev.CStoreResponseReceived)
    if isinstance(event, ev.CStoreResponseReceived):
        assert event.data.status == response.status
    # and only what the other events cannot carry is dicom.message.invalid
    if joined and _facts_are_valid(sent):
        assert not isinstance(event, ev.MessageInvalid)


# -- the same, from the bytes on the wire ------------------------------------------------


def _element(element: int, value: bytes) -> bytes:
    """One command-set element, Implicit VR Little Endian (PS3.7 6.3.1)."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _us(number: int) -> bytes:
    return struct.pack("<H", number)


_uid_bytes = valid.uids.map(lambda uid: (uid + "\0" * (len(uid) % 2)).encode()) | st.binary(
    max_size=80
)
_wire = st.fixed_dictionaries(
    {},
    optional={
        0x0002: _uid_bytes,  # Affected SOP Class UID
        0x0120: valid.message_ids.map(_us) | st.binary(max_size=6),  # Message ID Responded To
        0x0900: valid.statuses.map(_us) | st.binary(max_size=6),  # Status
        0x0902: st.binary(max_size=80) | odd_text.map(str.encode),  # Error Comment
        0x1000: _uid_bytes,  # Affected SOP Instance UID
    },
)


def _command_set(elements: dict[int, bytes]) -> Dataset:
    """The command set as pynetdicom decodes it from a peer's P-DATA."""
    fixed = {0x0100: _us(0x8001), 0x0800: _us(0x0101)}  # C-STORE-RSP, no data set
    raw = b"".join(_element(tag, value) for tag, value in sorted({**elements, **fixed}.items()))
    return decode(BytesIO(raw), True, True)


@FUZZ
@given(sent=sent_stores, elements=_wire, stamp=stamps)
def test_any_command_set_off_the_wire_becomes_one_event(
    sent: SentStore, elements: dict[int, bytes], stamp: Stamp
) -> None:
    # given any C-STORE-RSP command set a peer can encode
    response = StoreResponse.of(command_values(_command_set(elements)))
    # when the capture joins it to the request it names, if it is that one
    joined = sent if response.message_id == sent.message_id else None
    event = answer_event(joined, response, sent.association.id, stamp)
    # then it is one event that reads back unchanged
    assert event.type in OUTCOMES
    assert ev.parse_event(event.model_dump_json()) == event


def test_status_of_odd_length_is_read_as_unreadable_not_raised() -> None:
    # given a Status of three bytes, which pydicom raises on when it is read
    values = command_values(_command_set({0x0900: b"\x00\x00\x00"}))
    # then reading the command set gives the problem as a value
    assert isinstance(values["Status"], Unreadable)
    assert "BytesLengthException" in values["Status"].error


# -- AE titles ---------------------------------------------------------------------------

titles: st.SearchStrategy[str | bytes | None] = (
    st.none() | st.text(max_size=20) | st.binary(max_size=20) | valid.ae_titles
)


@FUZZ
@given(raw=st.tuples(titles, titles), host=st.none() | odd_text, port=odd_values)
def test_any_ae_titles_make_a_valid_association_and_substitutes_are_said(
    raw: tuple[str | bytes | None, str | bytes | None], host: object, port: object
) -> None:
    # given AE titles (and a host and port) that the peer's association carried
    ref, problems = association_ref(uuid.UUID(int=1), "acceptor", raw, host, port)
    # then the association is valid, and a title was substituted only with a reason
    for name, title in zip(("local_ae_title", "peer_ae_title"), raw, strict=True):
        kept = getattr(ref, name)
        assert check_ae_title(kept) == kept
        given = (title.decode("latin-1") if isinstance(title, bytes) else str(title or "")).strip(
            " "
        )
        if given == kept:
            assert name not in problems
        elif not given:
            assert (kept, name in problems) == ("UNKNOWN", False)  # nothing to substitute
        else:
            assert repr(kept) in problems[name]


# -- parsing any message body ----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_keys = ["specversion", "id", "source", "type", "time", "subject", "dataschema", "data"]


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A valid event with one or more of its fields dropped, replaced or made odd."""
    model = draw(st.sampled_from(list(ev.TYPES.values())))
    body: dict[str, Any] = json.loads(draw(valid.envelopes(model)).model_dump_json())
    for _ in range(draw(st.integers(1, 3))):
        target = (
            body["data"] if draw(st.booleans()) and isinstance(body.get("data"), dict) else body
        )
        key = draw(st.sampled_from([*sorted(target), "colour"]))
        target[key] = draw(
            json_values
            | st.sampled_from(["0.3", "2.0", "1.0", 1])  # specversions, in the wrong places too
            | st.sampled_from([*ev.TYPES, "dicom.teleport.requested"])
            | st.builds(schema_uri, st.sampled_from(list(ev.TYPES)), st.integers(0, 3))
        )
        if draw(st.booleans()):
            target.pop(draw(st.sampled_from(sorted(target))), None)
    return json.dumps(body).encode()


@st.composite
def truncated_events(draw: st.DrawFn) -> bytes:
    event = draw(valid.envelopes(draw(st.sampled_from(list(ev.TYPES.values())))))
    body = event.model_dump_json().encode()
    return body[: draw(st.integers(0, len(body) - 1))]


bodies = (
    mutated_events()
    | truncated_events()
    | json_values.map(lambda value: json.dumps(value).encode())
    | st.dictionaries(st.sampled_from(_keys), json_values).map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=200)
    | st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass"))
)


def _parsed(body: bytes) -> ev.Event | ValidationError:
    try:
        return ev.parse_event(body)
    except ValidationError as exc:  # any other exception fails the test
        return exc


@FUZZ
@given(body=bodies)
def test_any_body_is_an_event_or_a_clear_validation_error(body: bytes) -> None:
    # when any body is parsed
    event = _parsed(body)
    # then a rejection is pydantic's ValidationError, which the consumer parks as InvalidEvent
    if isinstance(event, ValidationError):
        with pytest.raises(InvalidEvent, match=r"."):
            decode_body(body)
        return
    # or it is an event of the contract that reads back unchanged
    assert ev.TYPES[event.type] is type(event)
    assert ev.parse_event(event.model_dump_json()) == event


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"data":' * 50_000, b"1e999999", b"NaN"])
def test_pathological_bodies_are_validation_errors(body: bytes) -> None:
    with pytest.raises(InvalidEvent):
        decode_body(body)


# -- the pynetdicom shell: real messages, a real in-memory outbox -----------------------


def _association(peer_ae_title: str = "STORESCP") -> Association:
    """A real (unstarted) association of the node, as requestor, with a peer."""
    assoc = Association(AE("DIMSEBUS"), "requestor")
    assoc.requestor.ae_title = "DIMSEBUS"
    assoc.requestor.address_info = AddressInformation("127.0.0.1", 11113)
    assoc.acceptor.ae_title = peer_ae_title
    assoc.acceptor.address_info = AddressInformation("127.0.0.1", 11112)
    return assoc


@pytest.fixture(scope="module")
def association() -> Association:
    return _association()


_OPENED: list[Outbox] = []
"""The outboxes ``_capture`` opened during the running test (every example of it)."""


@pytest.fixture(autouse=True)
def _close_outboxes() -> Iterator[None]:
    """Close each outbox a test's captures opened, with its wake-up socket, after it."""
    yield
    while _OPENED:
        _OPENED.pop().close()


def _capture() -> tuple[Capture, Outbox]:
    outbox = Outbox(Path(":memory:"))
    _OPENED.append(outbox)
    return Capture("fuzz", outbox), outbox


def _spooled(outbox: Outbox) -> list[ev.Event]:
    """The events spooled, recorded exchanges made into theirs as the relay does."""
    return [
        ev.parse_event(
            fact_events.row_event(row).model_dump_json() if row.format is not None else row.body
        )
        for row in outbox.peek(100)
    ]


@FUZZ
@given(sent=sent_stores, elements=_wire, answers_it=st.booleans())
def test_the_shell_never_raises_and_spools_one_event_per_response(
    association: Association, sent: SentStore, elements: dict[int, bytes], answers_it: bool
) -> None:
    # given a C-STORE-RQ the node is waiting on
    capture, outbox = _capture()
    state = capture.state(association)
    state.pending[sent.message_id] = state.recorder.prepare(sent, new_id(), capture.source)
    if answers_it:
        elements = {**elements, 0x0120: _us(sent.message_id & 0xFFFF)}
    # when pynetdicom reports any C-STORE-RSP
    message = C_STORE_RSP()
    message.command_set = _command_set(elements)
    capture.on_dimse_recv(Event(association, evt.EVT_DIMSE_RECV, {"message": message}), None)
    # then the request is answered only by the response that names it
    response_id = StoreResponse.of(command_values(message.command_set)).message_id
    answered = response_id == sent.message_id
    assert (sent.message_id in state.pending) is not answered
    # and its one event, of the three outcomes, is spooled at once
    if answered:
        (event,) = _spooled(outbox)
        assert event.type in OUTCOMES
        return
    # or, answering nothing, it is counted, and becomes one event when the association ends
    assert _spooled(outbox) == []
    capture.on_conn_close(Event(association, evt.EVT_CONN_CLOSE, {}), None)
    about_it = [
        e.data
        for e in _spooled(outbox)
        if isinstance(e, ev.MessageInvalid) and e.data.message == "C-STORE-RSP"
    ]
    assert [data.count for data in about_it] == [1]


def test_a_handler_that_fails_records_the_failure(association: Association) -> None:
    # given a C-STORE-RQ on a presentation context the association never accepted
    capture, outbox = _capture()
    message = C_STORE_RQ()
    message.context_id = 3
    message.command_set = Dataset()
    message.command_set.MessageID = 5
    message.command_set.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    message.command_set.AffectedSOPInstanceUID = "1.2.3"
    # when pynetdicom reports it sent
    capture.on_dimse_sent(Event(association, evt.EVT_DIMSE_SENT, {"message": message}), None)
    # then the handler did not raise into pynetdicom, and the failure is on record
    [event] = _spooled(outbox)
    assert isinstance(event, ev.MessageInvalid)
    assert (event.data.message, event.data.message_id) == ("C-STORE-RQ", 5)
    assert event.data.affected_sop_instance_uid == "1.2.3"
    assert event.data.error.startswith("on_dimse_sent raised StopIteration")
    assert event.data.association_id == association.dimsebus_id  # type: ignore[attr-defined]


def test_a_failure_that_cannot_be_recorded_is_logged_not_raised(
    association: Association, caplog: pytest.LogCaptureFixture
) -> None:
    # given an outbox that was closed under the capture
    capture, outbox = _capture()
    outbox.close()
    message = C_STORE_RSP()
    message.command_set = _command_set({0x0120: _us(1), 0x0900: _us(0)})
    # when a response to nothing arrives, and the association ends
    with caplog.at_level(logging.ERROR):
        capture.on_dimse_recv(Event(association, evt.EVT_DIMSE_RECV, {"message": message}), None)
        capture.on_conn_close(Event(association, evt.EVT_CONN_CLOSE, {}), None)
    # then pynetdicom sees no exception, and the log says the event is lost
    assert "the event is lost" in caplog.text


def test_peer_ae_title_the_contract_rejects_is_substituted_and_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given pynetdicom configured (by its validator hook) to let any AE title through
    monkeypatch.setitem(_config.VALIDATORS, "AE", lambda value: (True, ""))
    assoc = _association(peer_ae_title="STORE\\SCP")
    capture, outbox = _capture()
    # when the association is established
    capture.on_established(Event(assoc, evt.EVT_ESTABLISHED, {}), None)
    # then the association is recorded under a valid substitute, and why, once
    invalid, established = _spooled(outbox)
    assert isinstance(established, ev.AssociationEstablished)
    assert established.data.association.peer_ae_title == "STORE?SCP"
    assert isinstance(invalid, ev.MessageInvalid)
    assert invalid.data.message == "A-ASSOCIATE"
    assert invalid.data.association_id == established.data.association.id
    assert "peer_ae_title: 'STORE\\\\SCP' is not a valid AE title" in invalid.data.error
    assert invalid.data.fields["peer_ae_title"] == repr("STORE\\SCP")
    capture.on_established(Event(assoc, evt.EVT_ESTABLISHED, {}), None)
    assert [e.type for e in _spooled(outbox)][2:] == ["dicom.association.established"]


_answering_wire = st.builds(
    lambda elements, message_id, status: {**elements, 0x0120: message_id, 0x0900: status},
    _wire,
    valid.message_ids.map(_us),
    valid.statuses.map(_us),
)


@FUZZ
@given(sent=sent_stores, elements=_answering_wire, stamp=stamps)
def test_a_recorded_exchange_makes_the_event_the_general_path_builds(
    sent: SentStore, elements: dict[int, bytes], stamp: Stamp
) -> None:
    # given any C-STORE-RSP off the wire that the fast read takes as plain
    command_set = _command_set(elements)
    values = read_values(command_set, tags_of(exchange.RESPONSE_KEYWORDS))
    plain = exchange.plain_response(values) if values is not None else None
    assume(plain is not None)
    assert values is not None
    assert plain is not None
    # then the fast read saw what pydicom reads
    everything = command_values(command_set)
    assert values == {keyword: everything.get(keyword) for keyword in exchange.RESPONSE_KEYWORDS}
    # when the exchange is spooled as a record, and the relay makes its event
    outbox = Outbox(Path(":memory:"))
    try:
        outbox.append_record(exchange.Recorder().record(sent, plain, stamp))
        [row] = outbox.peek(1)
    finally:
        outbox.close()
    made = fact_events.row_event(row)
    # then it is the event the DIMSE thread would have built from the whole command set
    built = answer_event(sent, StoreResponse.of(everything), sent.association.id, stamp)
    assert str(made.id) == row.event_id
    if isinstance(built, ev.MessageInvalid):  # it lists the elements the record kept
        assert isinstance(made, ev.MessageInvalid)
        assert made.model_copy(update={"data": built.data}) == built
        assert set(made.data.fields) <= set(built.data.fields)
    else:
        assert made == built


def _waiting_capture() -> tuple[Capture, Outbox, Association, SentStore]:
    """A capture on a fresh association, one C-STORE-RQ outstanding (message id 7)."""
    capture, outbox = _capture()
    association = _association()
    association.dimse_timeout = 5
    capture.on_conn_open(Event(association, evt.EVT_CONN_OPEN, {}), None)
    state = capture.state(association)
    sent = SentStore(
        association=state.ref,
        presentation_context_id=1,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        message_id=7,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        affected_sop_instance_uid="1.2.3.4",
        move_originator=None,
        operation=ev.Operation(kind="store", id=uuid.uuid4()),
        attempt=1,
        labels={},
        requested_at=dt.datetime.now(dt.UTC),
    )
    state.pending[7] = state.recorder.prepare(sent, new_id(), capture.source)
    return capture, outbox, association, sent


def _success_for(message_id: int) -> C_STORE_RSP:
    message = C_STORE_RSP()
    message.command_set = _command_set({0x0900: _us(0), 0x0120: _us(message_id)})
    return message


def test_the_thread_waiting_for_a_response_spools_it_before_it_takes_it() -> None:
    # given the thread that sent a C-STORE-RQ, waiting for the next DIMSE message
    capture, outbox, association, sent = _waiting_capture()
    depth_when_taken: list[int] = []

    def requestor() -> None:
        association.dimse.get_msg(block=True)
        depth_when_taken.append(outbox.depth())

    thread = threading.Thread(target=requestor)
    thread.start()
    state = capture.state(association)
    deadline = time.monotonic() + 5
    while not state.awaited and time.monotonic() < deadline:
        time.sleep(0.001)
    # when the DUL thread reads its response and hands it over, as pynetdicom does
    message = _success_for(sent.message_id)
    capture.on_dimse_recv(Event(association, evt.EVT_DIMSE_RECV, {"message": message}), None)
    assert outbox.depth() == 0  # the DUL thread did not write it
    primitive = message.message_to_primitive()
    assert isinstance(primitive, C_STORE)
    association.dimse.msg_queue.put((1, primitive))
    thread.join(5)
    # then the waiting thread had spooled its event before it got the response
    assert depth_when_taken == [1]
    [event] = _spooled(outbox)
    assert isinstance(event, ev.CStoreResponseReceived)
    assert event.data.affected_sop_instance_uid == sent.affected_sop_instance_uid


def test_a_response_nobody_waits_for_is_spooled_where_it_is_read() -> None:
    # given a C-STORE-RQ whose sender stopped waiting (its DIMSE timeout passed)
    capture, outbox, association, sent = _waiting_capture()
    # when its response comes after all
    message = _success_for(sent.message_id)
    capture.on_dimse_recv(Event(association, evt.EVT_DIMSE_RECV, {"message": message}), None)
    # then its event is spooled at once
    [event] = _spooled(outbox)
    assert isinstance(event, ev.CStoreResponseReceived)
