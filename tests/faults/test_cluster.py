"""A three-node RabbitMQ cluster loses a node in the middle of a C-MOVE; nothing may be lost.

Every service is given the three nodes' URLs (each in another order, so that their
connections spread over the nodes) and ``replicas = 3``. The node that fails stays down
until the scenario is accounted: the clients must carry on through the other two.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from dimsebus.services.bus.connection import connect
from dimsebus.services.bus.topology import (
    LOG_STREAM,
    WorkQueue,
    declare_work_queue,
    ensure_topology,
)
from tests.cluster import Cluster
from tests.faults.ledger import Tally
from tests.faults.rig import Rig, new_rig, storescp_answers
from tests.faults.scenario import account, until
from tests.integration.peers import StoreSCP, storescp

pytestmark = pytest.mark.faults
INSTANCES = 500
OUTAGE = 100  # C-STOREs answered after the node failed
# Where each service's URL list starts: the node's relay on node 1, the tracker and the
# audit on node 2, the retrier on node 3.
ORDERS = {"node": (1, 2, 3), "tracker": (2, 3, 1), "audit": (2, 3, 1), "retrier": (3, 1, 2)}


def vhost_of(url: str) -> str:
    """The vhost of the first URL of a list."""
    return unquote(urlsplit(url.split(",")[0]).path.removeprefix("/"))


@pytest.fixture
def cluster_rig(tmp_path: Path, healed_cluster: Cluster) -> Iterator[Callable[[StoreSCP], Rig]]:
    """Make the scenario's rig on a vhost of its own on the cluster; stopped afterwards."""
    made: list[Rig] = []

    def make(peer: StoreSCP) -> Rig:
        url = healed_cluster.new_vhost()
        rig = new_rig(tmp_path / "rig", url, {"STORESCP": peer.port})
        for service, order in ORDERS.items():
            config = rig.root / f"{service}.toml"
            urls = healed_cluster.urls(vhost_of(url), order)
            text = re.sub(
                r'^amqp_url = ".*"$',
                f'amqp_url = "{urls}"\nreplicas = 3',
                config.read_text(),
                count=1,
                flags=re.M,
            )
            config.write_text(text)
        made.append(rig)
        return rig

    yield make
    for rig in made:  # its vhost goes with the cluster at the end of the session
        rig.stop_all()


def connected_node(cluster: Cluster, vhost: str, name: str, within: float = 60) -> int:
    """The node the connection called ``name`` is connected to, once it is."""
    deadline = time.monotonic() + within
    while True:
        for found, port in cluster.connections(vhost):
            if found == name:
                return cluster.node_of(port)
        assert time.monotonic() < deadline, f"no connection {name!r} within {within} s"
        time.sleep(0.2)


async def fail_mid_move(
    rig: Rig, peer: StoreSCP, fault: Callable[[], object]
) -> tuple[asyncio.Task[str], int]:
    """Start a C-MOVE of the rig's study, ``fault`` at its 100th C-STORE; the move, and how
    many C-STOREs were answered with the node down (``OUTAGE``, or the rest of the move)."""
    [study] = rig.study_uids
    move = asyncio.create_task(rig.movescu(study, peer.ae_title))
    await until(lambda: len(storescp_answers(peer.log)) >= 100, what="100 C-STOREs")
    await asyncio.to_thread(fault)
    down_at = len(storescp_answers(peer.log))
    await until(
        lambda: len(storescp_answers(peer.log)) >= down_at + OUTAGE or move.done(),
        what=f"{OUTAGE} C-STOREs with a node down",
    )
    return move, len(storescp_answers(peer.log)) - down_at


async def test_the_relays_broker_killed_mid_move(
    tmp_path: Path,
    healed_cluster: Cluster,
    cluster_rig: Callable[[StoreSCP], Rig],
    report: Callable[[Tally], Tally],
) -> None:
    cluster = healed_cluster
    with storescp(tmp_path / "received") as peer:
        rig = cluster_rig(peer)
        rig.add_study(INSTANCES, seed="cluster-kill")
        await rig.start()
        relay = f"dimsebus-node-{rig.node_id}"
        node = await asyncio.to_thread(connected_node, cluster, vhost_of(rig.amqp_url), relay)
        pid = await asyncio.to_thread(cluster.vm_pid, node)  # asked before: the kill is at once
        move, during = await fail_mid_move(rig, peer, lambda: cluster.kill(node, pid))
        await move
        tally = await account(
            rig,
            peer,
            INSTANCES,
            "cluster: the relay's broker killed mid-move",
            f"kill -9 of node {node} of 3 (the relay's), {during} C-STOREs, down until accounted",
        )
        # the relay carried on through another node, and said which
        assert rig.processes["node"].said(f"{relay} moved to the broker"), rig.processes[
            "node"
        ].tail()
        report(tally)


async def test_a_second_node_stopped_mid_move(
    tmp_path: Path,
    healed_cluster: Cluster,
    cluster_rig: Callable[[StoreSCP], Rig],
    report: Callable[[Tally], Tally],
) -> None:
    cluster = healed_cluster
    with storescp(tmp_path / "received") as peer:
        rig = cluster_rig(peer)
        rig.add_study(INSTANCES, seed="cluster-stop-app")
        await rig.start()
        vhost = vhost_of(rig.amqp_url)
        name = f"dimsebus-node-{rig.node_id}"
        relay = await asyncio.to_thread(connected_node, cluster, vhost, name)
        tracker = await asyncio.to_thread(connected_node, cluster, vhost, "dimsebus-tracker")
        second = tracker if tracker != relay else relay % len(cluster.ports) + 1
        move, during = await fail_mid_move(rig, peer, lambda: cluster.stop_app(second))
        await move
        tally = await account(
            rig,
            peer,
            INSTANCES,
            "cluster: a second node stopped mid-move",
            f"rabbitmqctl stop_app on node {second} of 3 (not the relay's), {during} C-STOREs, "
            "stopped until accounted",
        )
        if second == tracker:  # the tracker carried on through another node, and said which
            assert rig.processes["tracker"].said("moved to the broker"), rig.processes[
                "tracker"
            ].tail()
        report(tally)


async def test_the_topology_is_replicated_as_asked(cluster: Cluster) -> None:
    # given a fresh vhost on the three nodes
    urls = cluster.new_vhost()
    # when a service declares the log and a work queue on two replicas, and another work
    # queue without the setting
    async with await connect(urls, "dimsebus-test-replicas") as connection:
        await ensure_topology(connection, replicas=2)
        channel = await connection.channel()
        await declare_work_queue(channel, WorkQueue("dimsebus.two"), replicas=2)
        await declare_work_queue(channel, WorkQueue("dimsebus.default"))
    # then each has that many members; the broker's default for none is all three (3.10)
    members = await asyncio.to_thread(cluster.members, vhost_of(urls))
    assert {name: len(nodes) for name, nodes in members.items()} == {
        LOG_STREAM: 2,
        "dimsebus.two": 2,
        "dimsebus.two.dead": 2,
        "dimsebus.default": 3,
        "dimsebus.default.dead": 3,
    }
