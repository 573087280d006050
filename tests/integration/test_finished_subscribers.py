"""What scripts and other teams build on a move's outcome: `moves wait`, the example subscriber."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from dimsebus.services.tracker.store import open_store
from tests.integration.conftest import RunningNode, moves_of, movescu
from tests.integration.peers import storescp

pytestmark = pytest.mark.integration
TrackerFactory = Callable[..., Any]
EXAMPLE = Path(__file__).parents[2] / "examples" / "subscribe_finished.py"


async def test_the_example_subscriber_prints_a_real_moves_outcome(
    tmp_path: Path, amqp_url: str, start_node: Any, start_tracker: TrackerFactory
) -> None:
    # given a tracker following new events, and a destination no other move uses
    settings = await start_tracker(start_from="next")
    destination = f"AI{uuid.uuid4().hex[:10].upper()}"
    # and the example subscribed to finished moves to it (its queue bound: it says so)
    subscriber = await asyncio.create_subprocess_exec(
        *(sys.executable, str(EXAMPLE), "--amqp-url", amqp_url),
        *("--destination", destination, "--count", "1", "--timeout", "120"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert subscriber.stderr is not None
    ready = await asyncio.wait_for(subscriber.stderr.readline(), 60)
    assert b"listening on" in ready, ready
    # and a message under its routing key that is not a valid event
    await _publish(amqp_url, b'{"type": "dimsebus.move.finished"}', message_id="junk-1")
    with storescp(tmp_path / "received", ae_title=destination) as peer:
        node: RunningNode = await start_node(instances=10, destinations={destination: peer.port})
        # when movescu moves a 10-instance study there through the node
        await movescu(node, destination)
        # then the subscriber prints the move's one line and exits 0 after it (--count 1)
        output, errors = await asyncio.wait_for(subscriber.communicate(), 120)
    assert subscriber.returncode == 0, errors.decode()
    # (having skipped the invalid message, with why)
    assert "skipped junk-1: " in errors.decode()
    [move] = moves_of(settings.db, node)
    assert output.decode().splitlines() == [
        f"{move['move_id']}  MOVESCU->{destination}  completed  completed=10 warning=0 failed=0"
    ]


async def test_moves_wait_exits_0_with_the_final_state_of_a_real_move(
    tmp_path: Path, start_node: Any, start_tracker: TrackerFactory
) -> None:
    # given a tracker, and a node that knows storescp
    settings = await start_tracker(start_from="next")
    with storescp(tmp_path / "received") as peer:
        node: RunningNode = await start_node(instances=50, destinations={"STORESCP": peer.port})
        # when movescu moves a 50-instance study, and a script waits for it once the
        # tracker knows its id
        moving = asyncio.create_task(movescu(node, "STORESCP"))
        move_id = await _first_move_id(settings.db, node)
        waited = await _dimsebus(
            "moves", "wait", move_id[:13], "--timeout", "120", "--db", settings.db
        )
        await moving
    # then it exits 0 and prints the final state
    code, output, errors = waited
    assert code == 0, errors
    assert f"move {move_id}  MOVESCU -> STORESCP  completed" in output
    assert "expected 50, completed 50, warning 0, failed 0, remaining 0" in output
    # and --json prints what `moves show --json` prints
    code, output, errors = await _dimsebus("moves", "wait", move_id, "--json", "--db", settings.db)
    assert code == 0, errors
    view = json.loads(output)
    assert (view["move_id"], view["outcome"]) == (move_id, "completed")
    assert view["counts"] == {"remaining": 0, "completed": 50, "failed": 0, "warning": 0}


async def _publish(amqp_url: str, body: bytes, message_id: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange("dimsebus.events")
        message = aio_pika.Message(body, message_id=message_id)
        await exchange.publish(message, routing_key="dimsebus.move.finished")


async def _first_move_id(db: str, node: RunningNode) -> str:
    """The node's move id, as soon as the tracker committed its C-MOVE-RQ."""

    def move_ids() -> list[str]:
        store = open_store(db)
        try:
            return [str(m.move_id) for m in store.all_moves() if m.node_id == node.settings.node_id]
        finally:
            store.close()

    async with asyncio.timeout(60):
        while not (found := await asyncio.to_thread(move_ids)):  # noqa: ASYNC110 - the store
            await asyncio.sleep(0.05)
    return found[0]


async def _dimsebus(*argv: str) -> tuple[int | None, str, str]:
    """Exit status, stdout and stderr of a `dimsebus` command."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dimsebus.services",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    output, errors = await asyncio.wait_for(process.communicate(), 180)
    return process.returncode, output.decode(), errors.decode()
