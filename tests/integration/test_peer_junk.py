"""A peer that floods an association with C-STORE-RSPs that answer nothing: one event, an abort."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE

from dimsebus.schemas import events as ev
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.node import fact_events
from dimsebus.services.node.capture_shell import Capture
from dimsebus.services.node.config import NodeSettings, Peer
from dimsebus.services.node.sender import SendError, Target, send_files
from dimsebus.services.node.synthetic import write_study
from dimsebus.services.node.unsolicited import UNSOLICITED_LIMIT
from tests.integration.conftest import RunningNode, of_type, read_events, until
from tests.integration.peers import free_port

pytestmark = pytest.mark.integration
EVERYTHING = Peer(allow=frozenset({"echo", "store", "find", "move", "get"}))
JUNK = 200


def junk(request_like: Any, number: int) -> C_STORE:
    """A C-STORE-RSP to no request: another Message ID, and the peer's text in it."""
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 40000 + number
    response.AffectedSOPClassUID = CTImageStorage
    response.AffectedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{number + 1}"
    response.Status = 0x0000
    response.ErrorComment = f"junk {number} for your audit trail"  # type: ignore[assignment]
    return response


@contextlib.contextmanager
def junk_scp() -> Iterator[int]:
    """A Storage SCP that sends ``JUNK`` unsolicited C-STORE-RSPs before each answer."""
    ae = AE(ae_title="JUNKSCP")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()

    def on_store(event: Any) -> int:
        for number in range(JUNK):
            event.assoc.dimse.send_msg(junk(event.request, number), event.context.context_id)
        return 0x0000

    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield port
    finally:
        assert server is not None
        server.shutdown()


def events_in(outbox: Outbox, event_type: str) -> list[dict[str, Any]]:
    """The ``data`` of the spooled events of one type, facts made into theirs as the relay does."""
    rows = [row for row in outbox.peek(10_000) if row.type == event_type]
    bodies = [
        row.body if row.format is None else fact_events.row_event(row).model_dump_json()
        for row in rows
    ]
    return [json.loads(body)["data"] for body in bodies]


async def test_unsolicited_responses_to_a_send_abort_it_with_one_event(
    tmp_path: Path, amqp_url: str
) -> None:
    # given a send job (its outbox, no relay) and a Storage SCP that floods its answers
    settings = NodeSettings(
        node_id="junk-send",
        amqp_url=amqp_url,
        archive_path=tmp_path / "archive",
        outbox_path=tmp_path / "outbox.sqlite",
        peers={"JUNKSCP": EVERYTHING},
    )
    outbox = Outbox(settings.outbox_path)
    capture = Capture.for_node(settings, outbox)
    files = write_study(tmp_path / "study", 3, seed="junk")
    with junk_scp() as port:
        # when the node sends three files to it
        with contextlib.suppress(SendError):
            await asyncio.to_thread(
                send_files, settings, capture, Target.parse(f"JUNKSCP@127.0.0.1:{port}"), files
            )
        await until(lambda: bool(events_in(outbox, "dicom.message.invalid")), within=30)
    # then the node aborted the association, and ONE dicom.message.invalid counts the junk
    (aborted,) = events_in(outbox, "dicom.association.aborted")
    assert aborted["source"] == "local"
    (invalid,) = events_in(outbox, "dicom.message.invalid")
    assert invalid["message"] == "C-STORE-RSP"
    assert UNSOLICITED_LIMIT <= invalid["count"] < JUNK
    assert "junk 0 for your audit trail" in invalid["fields"]["ErrorComment"]
    outbox.close()


async def test_unsolicited_responses_to_the_node_abort_it_with_one_event(
    amqp_url: str, start_node: Any
) -> None:
    # given a node, and a peer it lets store
    node: RunningNode = await start_node(instances=1, peers={"JUNKSCU": EVERYTHING})
    ae = AE(ae_title="JUNKSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = await asyncio.to_thread(
        ae.associate, "127.0.0.1", node.settings.port, ae_title=node.settings.ae_title
    )
    assert assoc.is_established
    # when the peer sends C-STORE-RSPs that answer nothing on the node's association
    context_id = assoc.accepted_contexts[0].context_id
    assert context_id is not None
    for number in range(JUNK):
        if not assoc.is_established:
            break
        with contextlib.suppress(Exception):  # the node may have aborted it meanwhile
            assoc.dimse.send_msg(junk(None, number), context_id)
    # then the node aborts it
    await until(lambda: assoc.is_aborted, within=30)

    def done(events: list[Any]) -> bool:
        return bool(of_type(events, "dicom.message.invalid")) and bool(
            of_type(events, "dicom.association.aborted")
        )

    events = await read_events(amqp_url, node.source, done, within=30)
    (aborted,) = of_type(events, "dicom.association.aborted")
    assert isinstance(aborted.data, ev.AssociationAbortedData)
    assert aborted.data.source == "local"
    # and one dicom.message.invalid records the junk, with its count
    (invalid,) = of_type(events, "dicom.message.invalid")
    assert isinstance(invalid.data, ev.MessageInvalidData)
    assert invalid.data.count is not None
    assert UNSOLICITED_LIMIT <= invalid.data.count < JUNK
