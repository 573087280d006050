"""Fault scenarios on a three-node RabbitMQ cluster; nothing may be lost.

A node of the cluster fails in the middle of a C-MOVE: every service is given the three
nodes' URLs (each in another order, so that their connections spread over the nodes) and
``replicas = 3``. The node that fails stays down until the scenario is accounted: the
clients must carry on through the other two.

One of two copies of a service is killed (``kill -9``): the active tracker, one of two
retriers. The copies share one PostgreSQL database (a schema of the test's own), and the
rig's services are given every node's URL.

All in one file, so that they run one after another on one xdist worker: a node that one
scenario kills must not fall in the middle of another.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from dimsebus.schemas import events as ev
from dimsebus.services.bus.connection import connect
from dimsebus.services.bus.topology import (
    LOG_STREAM,
    WorkQueue,
    declare_work_queue,
    ensure_topology,
)
from tests.cluster import Cluster
from tests.faults.ledger import Tally
from tests.faults.rig import Process, Rig, new_rig, storescp_answers
from tests.faults.scenario import account, until
from tests.integration.peers import StoreSCP, free_port, storescp

pytestmark = pytest.mark.faults
INSTANCES = 500
OUTAGE = 100  # C-STOREs answered after the node failed
# Where each service's URL list starts: the node's relay on node 1, the tracker and the
# audit on node 2, the retrier on node 3.
ORDERS = {"node": (1, 2, 3), "tracker": (2, 3, 1), "audit": (2, 3, 1), "retrier": (3, 1, 2)}
TAKEOVER = 10.0  # seconds within which the standby tracker must be reading the log


def vhost_of(url: str) -> str:
    """The vhost of the first URL of a list."""
    return unquote(urlsplit(url.split(",")[0]).path.removeprefix("/"))


@pytest.fixture
def vhost_url(healed_cluster: Cluster) -> str:
    """A vhost of the scenario's own on the cluster, every node's URL (for ``make_rig``)."""
    return healed_cluster.new_vhost()


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
    many C-STOREs were answered from the fault's start on (``OUTAGE`` at least after it
    took effect, or the rest of the move). Counted from its start: the move goes on while
    ``fault`` waits for the broker to be gone, and on a fast machine ends meanwhile."""
    [study] = rig.study_uids
    move = asyncio.create_task(rig.movescu(study, peer.ae_title))
    await until(lambda: len(storescp_answers(peer.log)) >= 100, what="100 C-STOREs")
    began = len(storescp_answers(peer.log))
    await asyncio.to_thread(fault)
    down_at = len(storescp_answers(peer.log))
    await until(
        lambda: len(storescp_answers(peer.log)) >= down_at + OUTAGE or move.done(),
        what=f"{OUTAGE} C-STOREs with a node down",
    )
    return move, len(storescp_answers(peer.log)) - began


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
            f"kill -9 of node {node} of 3 (the relay's), {during} C-STOREs from the kill on, "
            "down until accounted",
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
            f"rabbitmqctl stop_app on node {second} of 3 (not the relay's), {during} C-STOREs "
            "from the command on, "
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


async def second_copy(
    rig: Rig, service: str, name: str, edit: dict[str, str], says: str
) -> Process:
    """Another ``service`` of the rig, its config the rig's with the ``edit``ed lines
    (key: TOML line, added first if not there); returns once its log says ``says``."""
    lines = (rig.root / f"{service}.toml").read_text().splitlines()
    for key, line in edit.items():
        at = [n for n, text in enumerate(lines) if text.startswith(f"{key} =")]
        if at:
            lines[at[0]] = line
        else:
            lines.insert(0, line)
    config = rig.root / f"{name}.toml"
    config.write_text("\n".join(lines) + "\n")
    process = rig.service(name, service, "--config", str(config))
    await until(lambda: process.said(says), 60, f"{name} to say {says!r}:\n{process.tail()}")
    return process


async def test_active_tracker_killed_mid_move_the_standby_takes_over(
    postgres_url: str,  # first: its schema is dropped after the rig's processes stopped
    tmp_path: Path,
    make_rig: Callable[..., Rig],
    report: Callable[[Tally], Tally],
) -> None:
    instances = 200
    with storescp(tmp_path / "received") as peer:
        # given two trackers on one PostgreSQL database, the rig's active, the other standing by
        rig = make_rig({"STORESCP": peer.port})
        rig.tracker_store = postgres_url
        rig.write_configs()
        [study] = [rig.add_study(instances, seed="kill-active-tracker")]
        await rig.start()
        outbox = rig.root / "tracker-b-outbox.sqlite"
        edit = {
            "tracker_id": 'tracker_id = "tracker-b"',
            "outbox_path": f'outbox_path = "{outbox}"',
        }
        standby = await second_copy(rig, "tracker", "tracker-b", edit, "tracker is standby")
        # when the active one is killed after 100 C-STOREs of a move
        move = asyncio.create_task(rig.movescu(study, peer.ae_title))
        await until(lambda: len(storescp_answers(peer.log)) >= 100, what="100 C-STOREs")
        await asyncio.to_thread(rig.processes["tracker"].kill)
        killed = time.monotonic()
        assert not move.done(), "the move was over before the tracker was killed"
        # then the standby reads the log from the committed checkpoint within 10 s
        await until(lambda: standby.said("tracker reading dimsebus.log from"), TAKEOVER)
        took = time.monotonic() - killed
        await move
        # and the move is counted exactly once (rig.settled reads the shared store)
        report(
            await account(
                rig,
                peer,
                instances,
                "active tracker killed mid-move",
                f"two trackers on one PostgreSQL: kill -9 of the active one after 100 "
                f"C-STOREs; the standby read on from the checkpoint {took:.1f} s later",
            )
        )


async def test_one_of_two_retriers_killed_while_retries_wait(
    postgres_url: str,  # first: its schema is dropped after the rig's processes stopped
    tmp_path: Path,
    make_rig: Callable[..., Rig],
    report: Callable[[Tally], Tally],
) -> None:
    instances, moves = 20, 3
    later = free_port()  # the destination is down until both retriers have decided
    rig = make_rig(
        {"LATER": later}, policy={"max_attempts": 20, "initial_delay": 2.0, "max_delay": 2.0}
    )
    rig.retrier_store = postgres_url
    rig.write_configs()
    # (a retrier killed between its claim of a decision and its publish holds it 5 s)
    config = rig.root / "retrier.toml"
    config.write_text("claim_lease = 5.0\n" + config.read_text())
    [study] = [rig.add_study(instances, seed="kill-a-retrier")]
    # given two retriers on one PostgreSQL store
    await rig.start()
    edit = {"retrier_id": 'retrier_id = "retrier-b"'}
    await second_copy(rig, "retrier", "retrier-b", edit, "consuming")
    # when three C-MOVEs to a destination that is down fail, and each retrier has scheduled
    # a retry of some, one of them is killed while the retries wait (2 s) in the delay queue
    await asyncio.gather(*(rig.movescu(study, "LATER", f"MOVESCU{n:02d}") for n in (1, 2, 3)))
    first, second = rig.processes["retrier"], rig.processes["retrier-b"]
    await until(lambda: first.said("retry ") and second.said("retry "), 60, "both to retry")
    await asyncio.to_thread(first.kill)
    assert not rig.processes["node"].said("re-sending"), "the retries were not waiting"
    with storescp(tmp_path / "received", ae_title="LATER", port=later) as peer:
        # then every instance arrives, each resend once, and the tracker counts them exactly
        tally = await account(
            rig,
            peer,
            instances * moves,
            "one of two retriers killed",
            f"two retriers on one PostgreSQL; {moves} moves to a destination that is down; "
            "kill -9 of one retrier once both had scheduled retries (waiting 2 s, none sent "
            "yet); destination up",
            moves=moves,
        )
    log = rig.settled_log
    sent = Counter(
        (e.data.operation.id, e.data.affected_sop_instance_uid, e.data.attempt)
        for e in {e.id: e for e in log}.values()
        if isinstance(e, ev.CStoreResponseReceived)
    )
    assert max(sent.values()) == 1, "an instance was resent twice in one attempt"
    unsent = Counter(
        (e.data.operation.id, e.data.sop_instance_uids, e.data.attempt)
        for e in {e.id: e for e in log}.values()
        if isinstance(e, ev.CStoreUnsent)
    )
    assert max(unsent.values()) == 1, "a resend command was executed twice"
    assert {e.source for e in log if isinstance(e, ev.RetryScheduled)} == {
        "dimsebus://retrier/retrier",
        "dimsebus://retrier/retrier-b",
    }
    report(tally)
