"""Canaries: what the node's patches of pynetdicom and aiormq rely on is still there.

``dimsebus.services.node.pynetdicom_internals`` and ``dimsebus.services.bus.aiormq_internals``
are the only modules that reach into those libraries' internals. A new release that moves,
renames or reorders what they rely on fails here, naming the patch, before it fails
in production as a lost C-STORE-RSP or a hung publish. When one fails: read the
release's change, fix the fence module (or drop the patch if the release fixed the
bug: see docs/upstream.md), then raise ``WRITTEN_FOR`` and the pins together.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
import threading
import tomllib
import warnings
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiormq
import pynetdicom
import pynetdicom.dul
import pytest
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pynetdicom import AE, _config, evt, fsm
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.dul import DULServiceProvider
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.transport import AssociationServer, AssociationSocket

from dimsebus.services.bus import aiormq_internals
from dimsebus.services.node import pynetdicom_internals
from dimsebus.services.node.synthetic import ct_instance

ROOT = Path(__file__).resolve().parents[2]
FENCES = {
    ROOT / "services/node/pynetdicom_internals.py",
    ROOT / "services/bus/aiormq_internals.py",
}


def source(function: Any) -> str:
    return inspect.getsource(function)


def missing(function: Any, *texts: str) -> list[str]:
    """The ``texts`` that ``function``'s source no longer contains."""
    found = source(function)
    return [f"{function.__qualname__}: {text!r}" for text in texts if text not in found]


@pytest.fixture
def assoc() -> Iterator[Association]:
    """A requestor association that never connects: its objects as pynetdicom builds them."""
    made = Association(AE(), "requestor")
    yield made
    made.dul._kill_thread = True


# -- versions and pins -----------------------------------------------------------------------


def _pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        name, equals, pinned = requirement.partition("==")
        if equals:
            pins[name.strip().lower()] = pinned.strip()
    return pins


def _locked() -> dict[str, str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    found = (re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line) for line in lines)
    return {m[1].lower().replace("_", "-"): m[2] for m in found if m}


@pytest.mark.parametrize(
    ("name", "fence"),
    [("pynetdicom", pynetdicom_internals), ("aiormq", aiormq_internals)],
)
def test_the_pin_the_lock_and_the_installed_release_are_the_one_patched(
    name: str, fence: Any
) -> None:
    assert _pins()[name] == fence.WRITTEN_FOR, f"pyproject.toml pins another {name}"
    assert _locked()[name] == fence.WRITTEN_FOR, f"requirements.lock locks another {name}"
    assert version(name) == fence.WRITTEN_FOR, f"another {name} is installed"


def test_aio_pika_is_pinned_as_locked() -> None:
    assert _pins()["aio-pika"] == _locked()["aio-pika"] == version("aio-pika")


@pytest.mark.parametrize("fence", [pynetdicom_internals, aiormq_internals])
def test_another_release_is_refused_or_warned_about(fence: Any) -> None:
    major, minor, patch = fence.WRITTEN_FOR.split(".")
    fence.check_version(fence.WRITTEN_FOR)  # silent
    with pytest.raises(ImportError, match=re.escape(fence.WRITTEN_FOR)):
        fence.check_version(f"{major}.{int(minor) + 1}.0")
    with pytest.warns(RuntimeWarning, match=re.escape(fence.WRITTEN_FOR)):
        fence.check_version(f"{major}.{minor}.{int(patch) + 1}")


def test_nothing_outside_the_fences_touches_a_private_attribute_of_the_libraries() -> None:
    offenders = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        text = path.read_text()
        if path in FENCES or not re.search(r"^(from|import) (pynetdicom|aiormq)", text, re.M):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and re.search(
                r"(pynetdicom|aiormq)\._", node.module or ""
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} import {node.module}")
            if not isinstance(node, ast.Attribute) or not re.match(r"_[a-z]", node.attr):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "os", "ssl"):
                continue
            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


# -- pynetdicom: logging ---------------------------------------------------------------------


def test_log_handler_level_none_binds_no_standard_handlers() -> None:
    # quiet_standard_event_logging: the documented switch is read when an association
    # or a server binds its default handlers
    assert missing(Association._bind_defaults, '_config.LOG_HANDLER_LEVEL == "standard"') == []
    assert (
        missing(AssociationServer._bind_defaults, '_config.LOG_HANDLER_LEVEL == "standard"') == []
    )
    before = _config.LOG_HANDLER_LEVEL
    try:
        pynetdicom_internals.quiet_standard_event_logging()
        made = Association(AE(), "requestor")
        for event in (evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT, evt.EVT_PDU_RECV, evt.EVT_PDU_SENT):
            assert made.get_handlers(event) == []
    finally:
        _config.LOG_HANDLER_LEVEL = before


# -- pynetdicom: the reactor pause (dimsebus.services.node.reactor) --------------------------------


def _reactor_loop() -> list[ast.stmt]:
    function = ast.parse(textwrap.dedent(source(Association._run_reactor))).body[0]
    (loop,) = [node for node in ast.walk(function) if isinstance(node, ast.While)]
    return loop.body


def test_the_reactor_loop_ends_with_the_idle_check_and_sleeps_before_its_checkpoint() -> None:
    # after_each_reactor_iteration: the idle check is the last step of an iteration;
    # after it the reactor only sleeps and comes back to its checkpoint
    body = [ast.unparse(statement) for statement in _reactor_loop()]
    assert body[0] == "time.sleep(0.001)"
    assert body[1:3] == ["self._is_paused = True", "self._reactor_checkpoint.wait()"]
    last = _reactor_loop()[-1]
    assert isinstance(last, ast.If)
    assert ast.unparse(last.test) == "self.dul.idle_timer_expired()"
    assert isinstance(last.body[-1], ast.Return)  # an expired timer ends the reactor


def test_the_reactor_serves_what_get_msg_gives_it() -> None:
    # wrap_get_msg and wrap_serve_request: the acceptor's reactor takes each request
    # from get_msg(block=False) and hands it to _serve_request
    loop = "\n".join(ast.unparse(statement) for statement in _reactor_loop())
    assert "context_id, msg = self.dimse.get_msg(block=False)" in loop
    assert "self._serve_request(msg, cast(int, context_id))" in loop


@pytest.mark.parametrize(
    "send",
    [Association.send_c_store, Association.send_c_echo],
)
def test_every_send_pauses_the_reactor_then_waits_for_its_response(send: Any) -> None:
    # replace_reactor_checkpoint, mark_reactor_paused, wrap_get_msg
    assert (
        missing(
            send,
            "self._reactor_checkpoint.clear()",
            "while not self._is_paused:",
            "self.dimse.get_msg(block=True)",
        )
        == []
    )


def test_an_association_has_what_the_reactor_patches_replace(assoc: Association) -> None:
    assert isinstance(assoc._reactor_checkpoint, threading.Event)
    assert pynetdicom_internals.has_stock_checkpoint(assoc)
    assert assoc._is_paused is False
    assert inspect.signature(assoc.dul.idle_timer_expired).parameters == {}
    assert assoc.dul.idle_timer_expired() is False


def test_the_reactor_patches_apply_to_an_association(assoc: Association) -> None:
    parked: list[bool] = []
    checkpoint = threading.Event()
    pynetdicom_internals.replace_reactor_checkpoint(assoc, checkpoint)
    pynetdicom_internals.after_each_reactor_iteration(assoc, lambda: parked.append(True))
    pynetdicom_internals.mark_reactor_paused(assoc)
    assert assoc._reactor_checkpoint is checkpoint
    assert assoc._is_paused is True
    assert assoc.dul.idle_timer_expired() is False
    assert parked == [True]


# -- pynetdicom: the DUL's idle sleep (dimsebus.services.node.reactor.wake_on_data) ----------------


def test_the_dul_sleeps_with_its_module_time_when_idle() -> None:
    # replace_dul_time: the idle sleep is time.sleep through the module's global `time`
    assert missing(DULServiceProvider.run_reactor, "time.sleep(self._run_loop_delay)") == []
    assert "time" in vars(pynetdicom.dul)


def test_the_dul_clock_is_replaced_and_given_back() -> None:
    class Clock:
        def __getattr__(self, name: str) -> Any:
            import time

            return getattr(time, name)

    before = pynetdicom_internals.dul_clock()
    try:
        pynetdicom_internals.replace_dul_time(Clock())
        assert isinstance(vars(pynetdicom.dul)["time"], Clock)
        pynetdicom_internals.restore_dul_time()
        assert vars(pynetdicom.dul)["time"].sleep is __import__("time").sleep
    finally:
        vars(pynetdicom.dul)["time"] = before


def test_the_dul_is_the_thread_and_holds_the_socket(assoc: Association) -> None:
    assert isinstance(pynetdicom_internals.dul_thread(assoc), threading.Thread)
    assert pynetdicom_internals.transport_socket(assoc) is None  # no socket yet


# -- pynetdicom: DIMSE and ACSE (dimsebus.services.node.gate, dimse, association) ------------------


def test_the_dimse_and_acse_methods_the_node_wraps_or_calls(assoc: Association) -> None:
    signatures: dict[str, tuple[Any, list[str]]] = {
        "get_msg": (assoc.dimse.get_msg, ["block"]),
        "_serve_request": (assoc._serve_request, ["msg", "context_id"]),
        "receive_primitive": (assoc.dimse.receive_primitive, ["primitive"]),
        "send_msg": (assoc.dimse.send_msg, ["primitive", "context_id"]),
        "send_reject": (assoc.acse.send_reject, ["result", "source", "diagnostic"]),
        "is_aborted": (assoc.acse.is_aborted, ["abort_type"]),
    }
    changed = {
        name: list(inspect.signature(method).parameters)
        for name, (method, expected) in signatures.items()
        if list(inspect.signature(method).parameters) != expected
    }
    assert changed == {}
    assert assoc._sent_abort is False
    assert pynetdicom_internals.sent_abort(assoc) is False
    assert assoc._accepted_cx == {}
    assert pynetdicom_internals.accepted_context(assoc, 1) is None
    assert missing(fsm.DT_2, "dul.assoc.dimse.receive_primitive(") == []
    assert (
        missing(DIMSEServiceProvider.receive_primitive, 'self.dul.event_queue.put("Evt19")') == []
    )


def test_the_dimse_wraps_apply_to_an_association(assoc: Association) -> None:
    calls: list[str] = []

    def wrap(name: str) -> Any:
        def wrapper(original: Any) -> Any:
            def called(*args: Any) -> Any:
                calls.append(name)
                return original(*args)

            return called

        return wrapper

    pynetdicom_internals.wrap_get_msg(assoc, wrap("get_msg"))
    pynetdicom_internals.wrap_serve_request(assoc, wrap("serve"))
    pynetdicom_internals.wrap_receive_primitive(assoc, wrap("receive"))
    assert assoc.dimse.get_msg(False) == (None, None)
    assert calls == ["get_msg"]
    pynetdicom_internals.abort_as_invalid(assoc)
    assert assoc.dul.event_queue.get(False) == "Evt19"


def test_a_rejection_from_evt_requested_is_what_pynetdicom_does() -> None:
    # reject_association copies the acceptor negotiation's own rejection
    assert (
        missing(
            ACSE._negotiate_as_acceptor,
            "self.send_reject(",
            "evt.trigger(self.assoc, evt.EVT_REJECTED, {})",
            "self.assoc.kill()",
        )
        == []
    )


def test_a_rejection_in_evt_requested_stops_the_negotiation() -> None:
    assert (
        missing(
            Association.run_reactor,
            "evt.trigger(self, evt.EVT_REQUESTED, {})",
            "if not self.is_aborted and not self.is_rejected:",
        )
        == []
    )
    assert missing(ACSE.send_reject, "self.assoc.is_rejected = True") == []


def test_the_move_scp_still_names_itself_as_move_originator() -> None:
    # pass_move_originator: if this fails, pynetdicom may have fixed it (docs/upstream.md)
    assert missing(QueryRetrieveServiceClass._move_scp, "originator_aet=self.ae.ae_title") == []
    parameters = inspect.signature(Association.send_c_store).parameters
    assert list(parameters)[1:] == [
        "dataset",
        "msg_id",
        "priority",
        "originator_aet",
        "originator_id",
    ]


def test_the_move_originator_is_passed_on(assoc: Association) -> None:
    sent: list[dict[str, Any]] = []
    assoc.send_c_store = lambda dataset, **kwargs: sent.append(kwargs)  # type: ignore[method-assign, assignment]
    pynetdicom_internals.pass_move_originator(assoc, "REQUESTOR", 7)
    assoc.send_c_store("dataset", msg_id=3)
    assert sent == [{"msg_id": 3, "priority": 2, "originator_aet": "REQUESTOR", "originator_id": 7}]


def _flat(function: Any) -> str:
    return " ".join(source(function).split())


def test_the_retrieve_scps_send_the_yielded_data_set_itself() -> None:
    # wrap_retrieve_stores: the handler's data set goes to send_c_store as it was yielded,
    # checked only to be a non-empty Dataset; only its SOP Instance UID is read otherwise
    move, get = (
        _flat(QueryRetrieveServiceClass._move_scp),
        _flat(QueryRetrieveServiceClass._get_scp),
    )
    for loop in (move, get):
        for text in (
            "(rsp_status, dataset) = cast(UserReturnType, result)",
            "elif status[0] == STATUS_PENDING and dataset:",
            "if not isinstance(dataset, Dataset):",
            "_add_failed_instance(dataset)",
            'if hasattr(ds, "SOPInstanceUID"): failed_instances.append(ds.SOPInstanceUID)',
        ):
            assert text in loop, text
    assert (
        "status_ds = store_assoc.send_c_store( dataset, msg_id=msg_id, "
        "originator_aet=self.ae.ae_title, originator_id=req.MessageID, )"
    ) in move
    assert "status_ds = self.assoc.send_c_store(dataset, msg_id=msg_id)" in get
    # on a Without Bulk Data context the Get SCP edits what it sends: it must be whole
    without_bulk = f'if context.abstract_syntax == "{pynetdicom_internals.WITHOUT_BULK_DATA}":'
    assert without_bulk in get
    assert get.index(without_bulk) < get.index("self.assoc.send_c_store(dataset")
    assert "delattr(dataset, keyword)" in get


def test_the_retrieve_stores_are_wrapped(assoc: Association) -> None:
    sent: list[tuple[Any, dict[str, Any]]] = []
    assoc.send_c_store = lambda dataset, **kwargs: sent.append((dataset, kwargs))  # type: ignore[method-assign, assignment]

    def wrap(send: Any) -> Any:
        return lambda dataset, **kwargs: send(f"sent {dataset}", **kwargs)

    pynetdicom_internals.wrap_retrieve_stores(assoc, wrap)
    assoc.send_c_store("header", msg_id=3)
    assert sent == [("sent header", {"msg_id": 3})]


# -- pynetdicom: C-STORE of a file's own bytes (dimsebus.services.node.sender) ------------


def test_a_path_is_sent_from_its_file_meta_and_bytes_when_the_switch_is_on() -> None:
    # send_paths_as_stored: the documented switch, read on every call; the request's
    # UIDs from the meta; only the file's own transfer syntax; nothing sent before
    assert (
        missing(
            Association.send_c_store,
            "if not _config.STORE_SEND_CHUNKED_DATASET:",
            "file_meta, offset = split_dataset(fpath)",
            "req._dataset_path = (fpath, offset)",
            "sop_class = cast(UID, file_meta.MediaStorageSOPClassUID)",
            "sop_instance = cast(UID, file_meta.MediaStorageSOPInstanceUID)",
            "tsyntax = cast(UID, file_meta.TransferSyntaxUID)",
            "allow_conversion = False",
            'sop_class, tsyntax, "scu", allow_conversion=allow_conversion',
        )
        == []
    )
    assert missing(Association._get_valid_context, "if allow_conversion and matches:") == []
    source_text = source(Association.send_c_store)
    assert source_text.index("self._get_valid_context(") < source_text.index(
        "self.dimse.send_msg(req"
    )


def test_the_switch_is_set_by_the_fence() -> None:
    before = _config.STORE_SEND_CHUNKED_DATASET
    try:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assert not pynetdicom_internals.sends_paths_as_stored()
        pynetdicom_internals.send_paths_as_stored()
        assert _config.STORE_SEND_CHUNKED_DATASET is True
        assert pynetdicom_internals.sends_paths_as_stored()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def test_a_request_from_a_path_carries_the_bytes_after_the_file_meta(tmp_path: Path) -> None:
    instance = ct_instance(patient_id="P", study_uid="1.2.3", series_uid="1.2.3.4", number=1)
    path = tmp_path / "ct.dcm"
    instance.save_as(path, enforce_file_format=True)
    meta, offset = split_dataset(path)
    assert meta.MediaStorageSOPInstanceUID == instance.SOPInstanceUID
    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID = meta.MediaStorageSOPClassUID
    request.AffectedSOPInstanceUID = meta.MediaStorageSOPInstanceUID
    request._dataset_path = (path, offset)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    assert message.command_set.CommandDataSetType == 0x0001
    fragments = [
        value
        for pdata in message.encode_msg(1, 256)
        for _, value in pdata.presentation_data_value_list
        if not value[0] & 0x01  # a data set fragment, not the command's (PS3.8 E.2)
    ]
    assert b"".join(value[1:] for value in fragments) == path.read_bytes()[offset:]
    assert fragments[-1][0] == 0x02
    assert all(value[0] == 0x00 for value in fragments[:-1])


def test_a_message_is_made_announced_and_queued_for_the_dul_as_the_direct_write_copies() -> None:
    # write_file_requests_on_caller does what send_msg does, and what DT-1 sends
    assert (
        missing(
            DIMSEServiceProvider.send_msg,
            "dimse_msg.primitive_to_message(primitive)",
            "dimse_msg.context_id = context_id",
            'evt.trigger(self.assoc, evt.EVT_DIMSE_SENT, {"message": dimse_msg})',
            "for pdata in dimse_msg.encode_msg(context_id, self.maximum_pdu_size):",
            "self.dul.send_pdu(pdata)",
        )
        == []
    )
    assert missing(fsm.DT_1, "dul._send(P_DATA_TF(primitive))") == []
    assert missing(AssociationSocket.send, 'self.event_queue.put("Evt17")') == []
    assert fsm.TRANSITION_TABLE[("Evt17", "Sta6")] == "AA-4"
    assert C_STORE._dataset_path is None  # the class default the check reads


def test_the_direct_write_leaves_other_messages_and_unconnected_associations_to_pynetdicom(
    assoc: Association,
) -> None:
    queued: list[tuple[Any, int]] = []
    assoc.dimse.send_msg = lambda primitive, context_id: queued.append((primitive, context_id))  # type: ignore[method-assign]
    pynetdicom_internals.write_file_requests_on_caller(assoc)
    from_file = C_STORE()
    from_file._dataset_path = (Path("ct.dcm"), 300)
    echo = C_ECHO()
    assoc.dimse.send_msg(echo, 1)
    assoc.dimse.send_msg(from_file, 3)  # no socket yet: pynetdicom's path
    assert queued == [(echo, 1), (from_file, 3)]


# -- pynetdicom: the edge server's reads (dimsebus.services.node.server) ---------------------------


def test_the_dul_internals_the_edge_server_reads_through() -> None:
    assert (
        missing(
            DULServiceProvider.__init__,
            "self._recv_pdu",
            "self.event_queue",
            "self.to_provider_queue",
        )
        == []
    )
    assert missing(DULServiceProvider._is_transport_event, "self._read_pdu_data()") == []
    assert missing(DULServiceProvider._decode_pdu, "return pdu, event") == []
    assert missing(fsm.StateMachine.do_action, "raise InvalidEventError") == []
    assert isinstance(AE()._servers, list)


# -- aiormq: publish_batch (dimsebus.services.bus.batch) -------------------------------------------


def test_basic_publish_numbers_and_registers_a_publish_as_the_batch_does() -> None:
    # number_publishes, unnumber_publishes, max_content_size (_split_body), write, publish_lock
    assert (
        missing(
            aiormq.Channel.basic_publish,
            "async with self.lock:",
            "self.delivery_tag += 1",
            "confirmation = self.create_future()",
            "self.confirmations[delivery_tag] = confirmation",
            "self.message_id_delivery_tag[message_id] = delivery_tag",
            "self._split_body(body)",
            "await self.write_queue.put(",
            "ChannelFrame.marshall(",
            "self.delivery_tag -= 1",
        )
        == []
    )


def test_the_channel_settles_confirmations_by_tag_and_returns_by_message_id() -> None:
    # a broker's ack or nack settles confirmations[tag]; a Basic.Return finds its
    # publish through message_id_delivery_tag
    assert missing(aiormq.Channel._confirm_delivery, "self.confirmations.pop(delivery_tag)") == []
    assert (
        missing(
            aiormq.Channel._on_return_frame,
            "self.message_id_delivery_tag.get(message_id)",
            "self.confirmations.pop(delivery_tag, None)",
        )
        == []
    )


def test_the_channel_attributes_the_batch_uses() -> None:
    assert (
        missing(
            aiormq.Channel.__init__,
            "self.confirmations = ",
            "self.message_id_delivery_tag: dict[str, int] = ",
            "self.delivery_tag = 0",
            "self.write_queue = connector.write_queue",
            "self.number: int = number",
        )
        == []
    )
    assert isinstance(vars(aiormq.Channel)["lock"], property)
    assert list(inspect.signature(aiormq.Channel._split_body).parameters) == ["self", "body"]
    assert {"frames", "channel_number"} <= set(inspect.signature(ChannelFrame.marshall).parameters)


def test_a_refused_open_keeps_the_brokers_close_frame_in_rpc() -> None:
    # aiormq's _rpc raises InvalidFrameError for a Connection.Close that answers Open,
    # with the frame in its local ``frame``: what refused_open_frame reads back
    source = inspect.getsource(aiormq.Connection._rpc)
    assert "_, _, frame = await frame_receiver.get_frame()" in source
    assert "raise InvalidFrameError(" in source
    close = spec.Connection.Close(reply_code=530, reply_text="NOT_ALLOWED - vhost x not found")

    def rpc(frame: Any) -> None:
        raise aiormq.exceptions.InvalidFrameError(f"got {frame!r}")

    with pytest.raises(aiormq.exceptions.InvalidFrameError) as caught:
        rpc(close)
    assert aiormq_internals.refused_open_frame(caught.value.__traceback__) is close


def test_the_fence_modules_warn_nothing_at_import_with_the_pinned_releases() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pynetdicom_internals.check_version(pynetdicom.__version__)
        aiormq_internals.check_version(version("aiormq"))
