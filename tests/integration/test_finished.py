"""`dimsebus.move.finished` once per final outcome, with the retrier on (issue 18).

A storescp whose disk fills part-way refuses the rest with 0xA700: the node's
failure events reach the log before the retrier's decisions, and the move must
not look finished in between.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from dimsebus.schemas import events as ev
from dimsebus.services.retrier.store import RetryStore
from dimsebus.services.tracker.app import TrackerSettings
from dimsebus.services.tracker.progress import FinishMark, MoveState
from dimsebus.services.tracker.store import open_store
from tests.integration.conftest import (
    RunningNode,
    Services,
    log_until_now,
    movescu,
    of_type,
    read_events,
    settled,
    tracker_caught_up,
)
from tests.integration.peers import make_room, small_filesystem, storescp
from tests.integration.test_retrier import (  # noqa: F401 (a fixture)
    RetrierFactory,
    cli,
    moved,
    scheduled,
    start_retrier,
    stopped_retrier,
)

pytestmark = pytest.mark.integration
FINISHED = "dimsebus.move.finished"


def committed(settings: TrackerSettings, move_id: str) -> MoveState:
    """The move as the tracker committed it."""
    store = open_store(settings.db)
    try:
        found = store.find(move_id)
    finally:
        store.close()
    assert found is not None
    return found


async def finished_events(
    amqp_url: str, settings: TrackerSettings, move_id: str, count: int
) -> list[ev.MoveFinished]:
    """The move's finished events on the log, once ``count`` of them are there and the
    tracker has taken in everything on the log since (so a further one would be there too)."""
    source = f"dimsebus://tracker/{settings.tracker_id}"

    def of_move(found: list[Any]) -> list[ev.MoveFinished]:
        return [e for e in found if isinstance(e, ev.MoveFinished) and e.subject == move_id]

    await read_events(amqp_url, source, lambda found: len(of_move(found)) >= count)
    await tracker_caught_up(amqp_url, settings)
    return of_move(await log_until_now(amqp_url, source))


async def test_a_move_retried_to_completion_is_finished_once(
    tmp_path: Path,
    amqp_url: str,
    start_node: Any,
    start_tracker: Any,
    start_retrier: RetrierFactory,  # noqa: F811
    services: Services,
) -> None:
    # given a tracker told that a retrier decides, a retrier that is stopped for now,
    # and storescp writing into a filesystem with room for 20 of 60 instances
    tracker = await start_tracker(retries=True)
    await stopped_retrier(start_retrier, services)
    with small_filesystem(tmp_path / "full", files=20) as folder, storescp(folder) as peer:
        node: RunningNode = await start_node(instances=60, destinations={"STORESCP": peer.port})
        # when the move leaves 40 refused, room is made, and the retrier starts
        await movescu(node, "STORESCP")
        await moved(node)
        await asyncio.to_thread(make_room, folder)
        retrier, _ = await start_retrier()
        await scheduled(retrier, node, 40)
        move = await settled(tracker.db, node, "completed", within=90)
        stored = len(peer.files())
    # then the tracker derived one final outcome, and the log has exactly that one
    state = await asyncio.to_thread(committed, tracker, move["move_id"])
    counts = ev.SubOperationCounts(remaining=0, completed=60, failed=0, warning=0)
    assert state.finished == FinishMark(revision=1, outcome="completed", counts=counts)
    found = await finished_events(amqp_url, tracker, move["move_id"], 1)
    assert [(f.data.outcome, f.data.revision) for f in found] == [("completed", 1)]
    assert found[0].data.counts == counts
    assert stored == 60
    assert any("0xA700" in e["what"] for e in move["timeline"])


async def test_a_move_given_up_then_retried_by_an_operator_is_revision_2(
    tmp_path: Path,
    amqp_url: str,
    start_node: Any,
    start_tracker: Any,
    start_retrier: RetrierFactory,  # noqa: F811
) -> None:
    # given a retrier that gives up after 2 attempts, and a destination that stays full
    tracker = await start_tracker(retries=True)
    await start_retrier(max_attempts=2)
    with small_filesystem(tmp_path / "full", files=5) as folder, storescp(folder) as peer:
        node: RunningNode = await start_node(instances=15, destinations={"STORESCP": peer.port})
        await movescu(node, "STORESCP")
        # when both attempts of 10 instances failed, the move is finished with failures once
        given_up = await settled(tracker.db, node, "completed_with_failures", within=90)
        first = await finished_events(amqp_url, tracker, given_up["move_id"], 1)
        assert [(f.data.outcome, f.data.revision) for f in first] == [
            ("completed_with_failures", 1)
        ]
        assert first[0].data.counts.failed == 10
        # and when room is made and an operator retries the move
        await asyncio.to_thread(make_room, folder)
        await cli("moves", "retry", given_up["move_id"], "--db", tracker.db, "--amqp-url", amqp_url)
        move = await settled(tracker.db, node, "completed", within=60)
        stored = len(peer.files())
    # then the change is a second finished, revision 2, and there is no other
    found = await finished_events(amqp_url, tracker, move["move_id"], 2)
    assert [(f.data.outcome, f.data.revision) for f in found] == [
        ("completed_with_failures", 1),
        ("completed", 2),
    ]
    state = await asyncio.to_thread(committed, tracker, move["move_id"])
    assert state.finished is not None
    assert state.finished.revision == 2
    assert stored == 15

    # and the operator's resend was announced on the log, as a retry of the move
    def announced(found: list[Any]) -> list[Any]:
        return [e for e in of_type(found, "dimsebus.retry.scheduled") if e.subject == move_id]

    move_id = move["move_id"]
    operator = "dimsebus://cli/tracker"  # `moves retry` with the default tracker id
    retried = announced(await read_events(amqp_url, operator, lambda f: bool(announced(f))))
    assert retried
    assert retried[0].data.reason == "an operator asked for a retry"


async def test_a_move_to_an_unknown_destination_fails_with_its_reason_unretried(
    amqp_url: str,
    start_node: Any,
    start_tracker: Any,
    start_retrier: RetrierFactory,  # noqa: F811
) -> None:
    # given a node, a retrier, and a tracker that waits for the retrier's decisions
    tracker = await start_tracker(retries=True)
    retrier, _ = await start_retrier()
    node: RunningNode = await start_node(instances=10)
    # when MOVESCU asks for a destination the node does not know (0xA801)
    await movescu(node, "NOWHERE")
    # then the move failed, says why, and is finished once
    move = await settled(tracker.db, node, "failed")
    assert "0xA801" in move["reason"]
    assert "unknown_destination" in move["reason"]
    found = await finished_events(amqp_url, tracker, move["move_id"], 1)
    assert [(f.data.outcome, f.data.revision) for f in found] == [("failed", 1)]
    assert found[0].data.reason == move["reason"]

    # and nothing was retried: the retrier parked every instance as permanent
    def decided() -> list[Any]:
        store = RetryStore(retrier.db)
        try:
            items = store.items(("scheduled", "parked"))
        finally:
            store.close()
        return [i for i in items if i.data.node_id == node.settings.node_id]

    async with asyncio.timeout(30):
        while True:
            mine = await asyncio.to_thread(decided)
            if sum(len(i.data.sop_instance_uids) for i in mine) >= 10:
                break
            await asyncio.sleep(0.2)
    assert {i.state for i in mine} == {"parked"}
    assert all("permanent failure" in i.reason for i in mine)
