"""Two ``dimsebus node`` processes on one broker (issue 22, item 3).

Each serves C-MOVEs from dcmtk's movescu at the same time; the retrier's resends of
one node's failures reach that node only (routed by node id on ``dimsebus.commands``,
through the delay queues); the tracker keeps the two nodes' moves apart, though
both C-MOVE-RQs carry Message ID 1 from the same calling AE title.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiormq.exceptions import ChannelNotFoundEntity

from dimsebus.schemas import events as ev
from dimsebus.services.bus.connection import connect
from dimsebus.services.bus.outbox import read_depth
from tests.broker import Broker, private_vhost
from tests.faults.rig import new_rig, until_true
from tests.integration.peers import free_port, storescp

INSTANCES = 20


@pytest.fixture
def vhost(broker: Broker) -> Iterator[str]:
    """A vhost of this test's own: one retrier and one tracker see only these two nodes."""
    with private_vhost(broker.url, broker.ctl) as url:
        yield url


async def queue_depth(url: str, name: str) -> int | None:
    """Messages in queue ``name`` (None: there is no such queue)."""
    connection = await connect(url, "dimsebus-tests-depth")
    async with connection:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
        except ChannelNotFoundEntity:
            return None
        return int(queue.declaration_result.message_count or 0)


async def test_two_nodes_move_at_once_and_each_gets_only_its_own_resends(
    tmp_path: Path, vhost: str
) -> None:
    later = free_port()  # node A's destination LATER: nothing listens there at first
    retries = {"max_attempts": 40, "initial_delay": 0.3, "max_delay": 0.6}
    with storescp(tmp_path / "received") as peer:
        a = new_rig(tmp_path / "a", vhost, {"STORESCP": peer.port, "LATER": later}, retries)
        b = new_rig(tmp_path / "b", vhost, {"STORESCP": peer.port})
        assert a.node_id != b.node_id
        study_a, study_b = a.add_study(INSTANCES, "node-a"), b.add_study(INSTANCES, "node-b")
        try:
            # given node A with the tracker, the retrier and the audit, and node B, one broker
            await asyncio.gather(a.start(), b.start_node())
            # when movescu moves a study from each node at the same time (Message ID 1 both),
            # and one from node A to LATER, which is down: the retrier resends to node A
            await asyncio.gather(
                a.movescu(study_a, "STORESCP"),
                b.movescu(study_b, "STORESCP"),
                a.movescu(study_a, "LATER"),
            )
            with storescp(tmp_path / "later", ae_title="LATER", port=later):
                await until_true(lambda: read_depth(b.outbox) == 0, 60, "node B's outbox to drain")
                views = await a.settled(moves=3, within=120)
        finally:
            for rig in (a, b):
                rig.stop_all()
        log = a.settled_log
    # then the tracker has three moves, each of its node, each complete
    by_node = sorted((v["node_id"], v["destination_ae_title"]) for v in views)
    assert by_node == [(a.node_id, "LATER"), (a.node_id, "STORESCP"), (b.node_id, "STORESCP")]
    assert [v["counts"]["completed"] for v in views] == [INSTANCES] * 3
    assert {v["c_move"]["message_id"] for v in views} == {1}, [v["c_move"] for v in views]
    # and every resend was for node A and sent by node A
    scheduled = [e for e in log if isinstance(e, ev.RetryScheduled)]
    assert scheduled
    assert {e.data.node_id for e in scheduled} == {a.node_id}
    resent = [e for e in log if isinstance(e, ev.CStoreResponseReceived) and e.data.attempt > 1]
    assert len({e.data.affected_sop_instance_uid for e in resent}) == INSTANCES
    assert {e.source for e in resent} == {f"dimsebus://node/{a.node_id}"}
    # and nothing reached node B's command queue, nor was parked there as another's
    assert not b.processes["node"].said("re-sending")
    assert not b.processes["node"].said("reached node")
    assert await queue_depth(vhost, f"dimsebus.node.{b.node_id}") in (0, None)
    assert await queue_depth(vhost, f"dimsebus.node.{b.node_id}.dead") in (0, None)
