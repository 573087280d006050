"""kill -9 of the node, the tracker and the audit service in the middle of their work."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from dimsebus.schemas import events as ev
from tests.faults.conftest import BrokerControl
from tests.faults.ledger import Tally
from tests.faults.rig import Rig, storescp_answers, unsent_uids
from tests.faults.scenario import account, move_through, until
from tests.integration.peers import storescp

pytestmark = pytest.mark.faults
INSTANCES = 500


def outbox_ids(path: Path) -> set[str]:
    """Event ids waiting in an outbox file."""
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT event_id FROM outbox")}


async def test_node_killed_mid_move_accounts_for_the_move_after_restart(
    tmp_path: Path,
    make_rig: Callable[..., Rig],
    broker_control: BrokerControl,
    report: Callable[[Tally], Tally],
) -> None:
    with storescp(tmp_path / "received") as peer:
        rig = make_rig({"STORESCP": peer.port})
        rig.add_study(INSTANCES, seed="kill-node")
        # given a C-MOVE under way whose events pile up in the outbox (the disk alarm,
        # raised before the move: the broker's disk monitor takes a while to notice)
        await rig.start()
        await broker_control.raise_disk_alarm()
        [study] = rig.study_uids
        move = asyncio.create_task(rig.movescu(study, peer.ae_title))
        await until(lambda: len(storescp_answers(peer.log)) >= 250, what="250 C-STOREs")
        # when the node and its relay are killed at once, and the node started again
        await asyncio.to_thread(rig.processes["node"].kill, True)
        await move  # movescu sees its association die
        spooled = outbox_ids(rig.outbox)
        assert spooled, "the disk alarm should have kept events in the outbox"
        broker_control.set_disk_free_limit("50MB")
        await rig.start_node()
        # then the spooled events are published with their ids, the cut-off move is
        # reported, and the retrier's resends complete it
        views = await rig.settled()
        log = rig.settled_log
        assert spooled <= {str(e.id) for e in log}
        [interrupted] = [e for e in log if isinstance(e, ev.MoveInterrupted)]
        cut_off = unsent_uids(log, "node_stopped")
        assert interrupted.data.unanswered == len(cut_off) > 0
        assert views[0]["counts"]["completed"] == INSTANCES
        report(
            await account(
                rig,
                peer,
                INSTANCES,
                "node killed mid-move",
                f"disk alarm, then kill -9 of node and relay after 250 C-STOREs "
                f"({len(spooled)} events spooled), alarm cleared, restart",
            )
        )


@pytest.mark.parametrize("victim", ["tracker", "audit"])
async def test_consumer_killed_mid_batch(
    victim: str, tmp_path: Path, make_rig: Callable[..., Rig], report: Callable[[Tally], Tally]
) -> None:
    with storescp(tmp_path / "received") as peer:
        rig = make_rig({"STORESCP": peer.port})
        rig.add_study(INSTANCES, seed=f"kill-{victim}")
        move = await move_through(rig, peer, lambda: None, after=150)
        await asyncio.to_thread(rig.processes[victim].kill)  # returns once it is gone
        await rig.start_downstream(victim)
        await move
        tally = await account(
            rig,
            peer,
            INSTANCES,
            f"{victim} killed mid-batch",
            f"kill -9 of the {victim} after 150 C-STOREs, restart",
        )
        # (what `dimsebus audit verify` and `audit query` read, in-process; the records
        # first: the marker rig.log() publishes may be audited right after it)
        verified, recorded = rig.audit_chain()
        assert verified.ok, verified
        log = await rig.log()
        assert len(recorded) == len(set(recorded)), "an event was audited twice"
        await until(lambda: len(storescp_answers(peer.log)) >= INSTANCES, 5, "all C-STOREs")
        assert set(recorded) <= {str(e.id) for e in log}
        report(tally)
