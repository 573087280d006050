"""The steps every fault scenario shares: start, move, inject, wait, account."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.faults.ledger import Tally, tally
from tests.faults.rig import Rig, storescp_answers, tracked_responses, unsent_uids, until_true
from tests.integration.peers import StoreSCP


async def until(check: Callable[[], bool], within: float = 120, what: str = "") -> None:
    """Wait until ``check()`` holds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.1)


async def move_through(
    rig: Rig, peer: StoreSCP, fault: Callable[[], object], after: int = 100
) -> asyncio.Task[str]:
    """Start the deployment and a C-MOVE of the rig's study; inject ``fault`` mid-move."""
    [study] = rig.study_uids
    await rig.start()
    move = asyncio.create_task(rig.movescu(study, peer.ae_title))
    await until(lambda: len(storescp_answers(peer.log)) >= after, what=f"{after} C-STOREs")
    await asyncio.to_thread(fault)
    return move


async def account(
    rig: Rig, peer: StoreSCP, instances: int, scenario: str, injected: str, moves: int = 1
) -> Tally:
    """The scenario's tally once the tracker has settled on completed moves.

    The audit trail must hold every event of the node, too.
    """
    views = await rig.settled(moves=moves)
    log = rig.settled_log
    assert sum(v["counts"]["completed"] for v in views) == instances, views
    # The audit consumes a queue: after a broker restart, deliveries it had not acked come
    # again after later ones, so passing a marker is no proof; wait on the fact itself.
    of_node = {str(e.id) for e in log if e.source.endswith(rig.node_id)}
    await until_true(
        lambda: of_node <= rig.audited(), 120, "the audit trail to hold every event of the node"
    )
    return tally(
        scenario,
        injected,
        storescp_answers(peer.log),
        log,
        tracker=tracked_responses(views),
        cut_off=unsent_uids(log, "node_stopped"),
    )
