"""The tracker against the real log: dcmtk moves through the node, replay, and kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dimsebus.services.tracker.store import open_store
from tests.integration.conftest import (
    RunningNode,
    moves_of,
    movescu,
    of_type,
    read_events,
    settled,
    until,
)
from tests.integration.peers import run_tool, storescp

pytestmark = pytest.mark.integration
TrackerFactory = Callable[..., Any]


async def test_a_100_instance_move_is_completed(
    tmp_path: Path, amqp_url: str, start_node: Any, start_tracker: TrackerFactory
) -> None:
    # given a tracker following the log, and a node that knows storescp
    settings = await start_tracker()
    with storescp(tmp_path / "received") as peer:
        node: RunningNode = await start_node(instances=100, destinations={"STORESCP": peer.port})
        # when movescu moves a 100-instance study through the node
        await movescu(node, "STORESCP")
    # then `moves show --json` reports 100 completed, outcome completed
    move = await settled(settings.db, node, "completed")
    shown = await run_tool(
        sys.executable,
        "-m",
        "dimsebus.services",
        "moves",
        "show",
        move["move_id"][:24],
        "--json",
        "--db",
        settings.db,
    )
    view = json.loads(shown)
    assert view["counts"] == {"remaining": 0, "completed": 100, "failed": 0, "warning": 0}
    assert (view["expected"], view["requestor_ae_title"], view["destination_ae_title"]) == (
        100,
        "MOVESCU",
        "STORESCP",
    )
    assert view["failed_instances"] == []
    # and it published its verdict on the log
    events = await read_events(
        amqp_url,
        f"dimsebus://tracker/{settings.tracker_id}",
        lambda found: any(
            e.type == "dimsebus.move.finished" and e.subject == move["move_id"] for e in found
        ),
    )
    finished = [
        e for e in of_type(events, "dimsebus.move.finished") if e.subject == move["move_id"]
    ]
    assert finished[-1].data.outcome == "completed"  # type: ignore[attr-defined]


async def test_abort_gives_completed_with_failures_and_a_replay_rebuilds_it(
    tmp_path: Path, start_node: Any, start_tracker: TrackerFactory
) -> None:
    # given a move to a destination that aborts on its first C-STORE-RQ
    settings = await start_tracker(name="first")
    with storescp(tmp_path / "received", "--abort-after") as peer:
        node: RunningNode = await start_node(
            instances=12, destinations={"STORESCP": peer.port}, dimse_timeout=5.0
        )
        await movescu(node, "STORESCP")
    # then the tracker reports the failures
    move = await settled(settings.db, node, "completed_with_failures")
    assert move["counts"]["failed"] == 12
    reasons = {f["reason"][:12] for f in move["failed_instances"]}
    assert reasons <= {"no response:", "not sent: as"}
    # when a tracker with no database at all reads the log from the start
    rebuilt = await start_tracker(name="rebuilt")
    again = await settled(rebuilt.db, node, "completed_with_failures")
    # then it arrives at the same state
    assert json.dumps(again, sort_keys=True) == json.dumps(move, sort_keys=True)


async def test_deleting_the_database_and_restarting_rebuilds_identical_state(
    tmp_path: Path, amqp_url: str, start_node: Any
) -> None:
    # given a tracker process that folded a move
    db = tmp_path / "tracker.sqlite"
    with storescp(tmp_path / "received") as peer:
        node: RunningNode = await start_node(instances=30, destinations={"STORESCP": peer.port})
        process = _tracker_process(tmp_path, db, amqp_url)
        try:
            await movescu(node, "STORESCP")
            before = await settled(str(db), node, "completed")
        finally:
            process.terminate()
            process.wait(30)
    state_before = _all_states(str(db))
    # when its database is deleted and it starts again
    _delete_database(tmp_path)
    process = _tracker_process(tmp_path, db, amqp_url)
    try:
        after = await settled(str(db), node, "completed")
    finally:
        process.terminate()
        process.wait(30)
    # then the rebuilt state is identical, move by move
    assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)
    rebuilt = _all_states(str(db))
    assert {k: v for k, v in rebuilt.items() if k in state_before} == state_before


async def test_kill_9_mid_move_then_restart_ends_with_exact_counts(
    tmp_path: Path, amqp_url: str, start_node: Any
) -> None:
    # given a tracker process and a 300-instance move
    db = tmp_path / "tracker.sqlite"
    with storescp(tmp_path / "received") as peer:
        node: RunningNode = await start_node(instances=300, destinations={"STORESCP": peer.port})
        process = _tracker_process(tmp_path, db, amqp_url)
        move = asyncio.create_task(movescu(node, "STORESCP"))
        # when the tracker is killed once it has folded part of the move (the destination is
        # held still after 100 instances meanwhile: the move cannot end first)
        await until(lambda: len(peer.files()) >= 100, what="100 instances at the destination")
        peer.process.send_signal(signal.SIGSTOP)
        try:
            await until(lambda: _folded(db, node) > 0, what="the tracker to fold a response")
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        finally:
            peer.process.send_signal(signal.SIGCONT)
        await move
    # and restarted after the move ended
    process = _tracker_process(tmp_path, db, amqp_url)
    try:
        final = await settled(str(db), node, "completed", within=120)
    finally:
        process.terminate()
        process.wait(30)
    # then every sub-operation is counted exactly once
    assert final["counts"] == {"remaining": 0, "completed": 300, "failed": 0, "warning": 0}
    assert final["events"] == 300 + 2  # responses, requested, completed


def _tracker_process(tmp_path: Path, db: Path, amqp_url: str) -> subprocess.Popen[bytes]:
    env = {
        **{key: value for key, value in os.environ.items() if key != "AMQP_URL"},  # it would win
        "DIMSEBUS_AMQP_URL": amqp_url,
        "DIMSEBUS_OUTBOX_PATH": str(tmp_path / "t-outbox.sqlite"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dimsebus.services", "tracker", "--db", str(db)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _folded(db: Path, node: RunningNode) -> int:
    """How many of the node's move's sub-operations the tracker's store counts done."""
    if not db.exists():
        return 0
    moves = moves_of(str(db), node)
    return moves[0]["counts"]["completed"] if moves else 0


def _delete_database(folder: Path) -> None:
    for path in folder.glob("tracker.sqlite*"):
        path.unlink()


def _all_states(db: str) -> dict[str, str]:
    store = open_store(db)
    try:
        return {str(m.move_id): m.model_dump_json() for m in store.all_moves()}
    finally:
        store.close()
