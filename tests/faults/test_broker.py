"""The broker misbehaves in the middle of a 500-instance C-MOVE; nothing may be lost."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.broker import Broker
from tests.faults.conftest import BrokerControl
from tests.faults.ledger import Tally
from tests.faults.rig import Rig, storescp_answers
from tests.faults.scenario import account, move_through, until
from tests.integration.peers import storescp

# They stop, kill and fill the broker: never beside other tests (make test runs them alone).
pytestmark = [pytest.mark.faults, pytest.mark.exclusive]
INSTANCES = 500
OUTAGE = 100  # C-STOREs answered while the broker is down


@pytest.mark.parametrize("how", ["stop_app", "kill"])
async def test_broker_restarted_mid_move(
    how: str,
    tmp_path: Path,
    make_rig: Callable[..., Rig],
    broker_control: BrokerControl,
    report: Callable[[Tally], Tally],
) -> None:
    with storescp(tmp_path / "received") as peer:
        rig = make_rig({"STORESCP": peer.port})
        rig.add_study(INSTANCES, seed=f"broker-{how}")
        stop = broker_control.stop_app
        if how == "kill":
            stop = functools.partial(broker_control.kill, broker_control.vm_pid())
        move = await move_through(rig, peer, stop)
        # the outage lasts while the DICOM side goes on (OUTAGE more C-STOREs, or the rest of
        # the move), the outbox holding their events
        down_at = len(storescp_answers(peer.log))
        await until(
            lambda: len(storescp_answers(peer.log)) >= down_at + OUTAGE or move.done(),
            what=f"{OUTAGE} C-STOREs with the broker down",
        )
        during = len(storescp_answers(peer.log)) - down_at
        start = broker_control.start_app if how == "stop_app" else broker_control.start_server
        await asyncio.to_thread(start)
        await move
        injected = (
            f"rabbitmqctl stop_app, {during} C-STOREs, start_app"
            if how == "stop_app"
            else f"kill -9 of the broker VM, {during} C-STOREs, rabbitmq-server -detached"
        )
        report(await account(rig, peer, INSTANCES, f"broker {how} mid-move", injected))


async def test_connections_closed_by_the_broker(
    tmp_path: Path,
    make_rig: Callable[..., Rig],
    broker: Broker,
    vhost_url: str,
    report: Callable[[Tally], Tally],
) -> None:
    here = Broker(vhost_url, broker.ctl)
    names = ["dimsebus-tracker", "dimsebus-tracker-relay", "dimsebus-retrier", "dimsebus-audit"]

    def close_all() -> None:
        # Each service is given the time to (re)connect first: the node now reaches the
        # 100th C-STORE before its relay process may have connected at all.
        node = f"dimsebus-node-{rig.node_id}"
        wanted = {node, f"{node}-commands", *names}
        deadline = time.monotonic() + 30
        while missing := wanted - here.connection_names():
            assert time.monotonic() < deadline, f"no connection named {missing} within 30 s"
            time.sleep(0.2)
        here.close_all_connections()

    with storescp(tmp_path / "received") as peer:
        rig = make_rig({"STORESCP": peer.port})
        rig.add_study(INSTANCES, seed="close-connection")
        move = await move_through(rig, peer, close_all)
        await until(lambda: len(storescp_answers(peer.log)) >= 300, what="300 C-STOREs")
        await asyncio.to_thread(close_all)  # again: close_all waits for each to reconnect
        await move
        report(
            await account(
                rig,
                peer,
                INSTANCES,
                "connections closed",
                "rabbitmqctl close_all_connections: every publisher and consumer connection, twice",
            )
        )


async def test_disk_alarm_blocks_publishers_not_dicom(
    tmp_path: Path,
    make_rig: Callable[..., Rig],
    broker_control: BrokerControl,
    report: Callable[[Tally], Tally],
) -> None:
    with storescp(tmp_path / "received") as peer:
        rig = make_rig({"STORESCP": peer.port})
        rig.add_study(INSTANCES, seed="disk-alarm")
        # given the broker's disk alarm is raised before the move
        await rig.start()
        await broker_control.raise_disk_alarm()
        # when a C-MOVE runs, DICOM traffic flows and the outbox absorbs the events
        [study] = rig.study_uids
        await rig.movescu(study, peer.ae_title)
        assert len(storescp_answers(peer.log)) == INSTANCES
        assert rig.outbox_depth() >= INSTANCES
        # then once the alarm clears, everything is delivered
        broker_control.set_disk_free_limit("50MB")
        report(
            await account(
                rig,
                peer,
                INSTANCES,
                "disk alarm",
                "set_disk_free_limit above the free space for the whole move, then cleared",
            )
        )
