"""Poison messages on every consumer's input: parked (or skipped) with the reason; flow goes on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import aio_pika
import pytest

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.consumer import REASON_HEADER
from dimsebus.services.bus.topology import COMMANDS_EXCHANGE, EVENTS_EXCHANGE, PARKING_SUFFIX
from dimsebus.services.clock import utc_now
from tests.faults.ledger import Tally
from tests.faults.rig import Rig
from tests.faults.scenario import account
from tests.integration.peers import storescp

pytestmark = pytest.mark.faults
INSTANCES = 50


def poisons() -> dict[str, bytes]:
    """Three kinds of bad message body, by name."""
    valid = next(
        e
        for e in move_story(node_id="poison", start=utc_now(), ids=sequential_ids(7000))
        if isinstance(e, ev.CStoreResponseReceived) and e.data.status_category == "failure"
    )
    body = json.loads(valid.model_dump_json())
    return {
        "bad JSON": b'{"specversion": "1.0", "id": ',
        "unknown type": json.dumps({**body, "type": "dicom.teleport.requested"}).encode(),
        "future schema version": json.dumps(
            {**body, "dataschema": body["dataschema"].replace(":v1", ":v2")}
        ).encode(),
    }


async def publish_poisons(url: str, node_id: str) -> None:
    """Each poison to the events exchange (log, retrier, audit) and to the node's commands."""
    connection = await connect(url, "dimsebus-faults-poisoner")
    async with connection:
        channel = await confirming_channel(connection)
        events = await channel.get_exchange(EVENTS_EXCHANGE)
        commands = await channel.get_exchange(COMMANDS_EXCHANGE)
        for name, body in poisons().items():
            message = aio_pika.Message(body, message_id=f"poison: {name}")
            await events.publish(message, "dicom.cstore.response.received.failure", mandatory=True)
            await commands.publish(message, f"dimsebus.command.resend.{node_id}", mandatory=True)


async def parked(url: str, queue: str) -> dict[str, str]:
    """What ``queue``'s parking queue holds: message id -> the reason it was parked."""
    connection = await connect(url, "dimsebus-faults-parking")
    found: dict[str, str] = {}
    async with connection:
        channel = await connection.channel()
        dead = await channel.get_queue(queue + PARKING_SUFFIX, ensure=False)
        while (message := await dead.get(no_ack=False, fail=False)) is not None:
            found[str(message.message_id)] = str((message.headers or {}).get(REASON_HEADER))
            await message.reject(requeue=True)
            if len(found) >= 3:
                break
    return found


async def test_poison_messages_are_parked_with_the_reason_and_the_flow_goes_on(
    tmp_path: Path, make_rig: Callable[..., Rig], report: Callable[[Tally], Tally]
) -> None:
    with storescp(tmp_path / "received") as peer:
        rig = make_rig({"STORESCP": peer.port})
        [study] = [rig.add_study(INSTANCES, seed="poison")]
        await rig.start()
        await rig.consuming("dimsebus.retrier", "dimsebus.audit", f"dimsebus.node.{rig.node_id}")
        # given poison on the log and on every consumer queue
        await publish_poisons(rig.amqp_url, rig.node_id)
        # when a move runs after it
        await rig.movescu(study, "STORESCP")
        tally = await account(
            rig,
            peer,
            INSTANCES,
            "poison messages",
            "bad JSON, an unknown type and a v2 dataschema on the log and on the retrier's, "
            "the audit's and the node's command queues",
        )
    # then each queue parked all three, each with a reason that names the problem
    for queue in ("dimsebus.retrier", "dimsebus.audit", f"dimsebus.node.{rig.node_id}"):
        reasons = await parked(rig.amqp_url, queue)
        assert "Invalid JSON" in reasons["poison: bad JSON"], reasons
        assert "dicom.teleport.requested" in reasons["poison: unknown type"], reasons
        assert "v2" in reasons["poison: future schema version"], reasons
    # and the tracker, which reads the stream, skipped them and recorded why
    rejected = rig.rejected()
    assert len(rejected) == 3, rejected
    report(tally)
