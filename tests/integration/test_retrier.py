"""Retries end to end: dcmtk destinations that fail, the node, the tracker and the retrier.

The retrier runs with delays of milliseconds, still held by RabbitMQ's delay
queues. Where a scenario must change something before the retry (make room, bring
the destination back), the retrier is stopped while the move fails: its queue holds
the failures until it starts again, so the retry comes after the change without
racing a clock. The tracker is told that a retrier decides (``retries``): a move
is finished only once every decision about it is in, which is what the tests wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from dimsebus.schemas import events as ev
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.topology import COMMANDS_EXCHANGE
from dimsebus.services.node.synthetic import write_study
from dimsebus.services.retrier.app import RetrierSettings, run_retrier
from dimsebus.services.retrier.policy import RetryPolicy
from dimsebus.services.retrier.store import RetryStore
from tests.integration.conftest import (
    RunningNode,
    Services,
    log_until_now,
    moves_of,
    movescu,
    of_type,
    read_events,
    settled,
    until,
)
from tests.integration.peers import (
    StoreSCP,
    answering_scp,
    free_port,
    make_room,
    refusing_scp,
    run_tool,
    small_filesystem,
    storescp,
)

pytestmark = pytest.mark.integration
RECEIVED, UNSENT = "dicom.cstore.response.received", "dicom.cstore.unsent"
RetrierFactory = Callable[..., Any]


@pytest.fixture
def start_retrier(tmp_path: Path, amqp_url: str, services: Services) -> RetrierFactory:
    """Run in-process retriers with a fast policy; setting the returned event stops one."""

    async def start(name: str = "r1", **policy: Any) -> tuple[RetrierSettings, asyncio.Event]:
        settings = RetrierSettings(
            amqp_url=amqp_url,
            db=tmp_path / f"{name}.sqlite",
            retrier_id=name,
            policy=RetryPolicy(
                **{"max_attempts": 4, "initial_delay": 0.05, "multiplier": 1.0, "jitter": 0.0}
                | policy
            ),
        )
        return settings, await services.start(run_retrier, settings)

    return start


def responses(events: list[Any], attempt: int) -> list[Any]:
    """The distinct response events of one attempt."""
    found: list[Any] = list({e.id: e for e in of_type(events, RECEIVED)}.values())
    return [e for e in found if e.data.attempt == attempt]


async def scheduled(
    settings: RetrierSettings, node: RunningNode, count: int, within: float = 30.0
) -> None:
    """Wait until the retrier has scheduled ``count`` retries of ``node``'s sub-operations.

    The retrier's queue is shared by the session's tests, so it may also decide
    about failures of earlier tests' nodes.
    """

    def enough() -> bool:
        store = RetryStore(settings.db)
        try:
            items = store.items(("scheduled",))
        finally:
            store.close()
        return sum(item.data.node_id == node.settings.node_id for item in items) >= count

    async with asyncio.timeout(within):
        while True:
            if await asyncio.to_thread(enough):
                return
            await asyncio.sleep(0.2)


def assert_retried(move: dict[str, Any]) -> None:
    """Retried instances arrived after more than one attempt, the first of them at the second.

    A loaded machine can make a retry itself fail (and be retried again), so some
    may need more; the timeline says why.
    """
    attempts = [r["attempts"] for r in move["retried_instances"]]
    assert attempts, move["timeline"]
    assert min(attempts) == 2, move["timeline"]


def retries(settings: RetrierSettings, node: RunningNode) -> list[dict[str, Any]]:
    """What `dimsebus retries list --json` prints about ``node``'s sub-operations."""
    import json

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dimsebus.services",
            "retries",
            "list",
            "--json",
            "--db",
            str(settings.db),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [r for r in json.loads(result.stdout) if r["node_id"] == node.settings.node_id]


async def moved(node: RunningNode) -> list[Any]:
    """The node's events, once its move's final response is on the log: every failure of
    the move is then in the retrier's queue too."""
    events = await read_events(
        node.settings.amqp_url,
        node.source,
        lambda found: bool(of_type(found, "dicom.move.completed")),
    )
    assert of_type(events, "dicom.move.completed"), "the move's final response is not on the log"
    return events


async def stopped_retrier(
    start_retrier: RetrierFactory, services: Services, **policy: Any
) -> RetrierSettings:
    """A retrier that declared its queue, then stopped: failures wait there meanwhile."""
    settings: RetrierSettings
    settings, stop = await start_retrier(**policy)
    await services.stop(stop)
    return settings


@contextlib.asynccontextmanager
async def through_full_destination(
    tmp_path: Path,
    start_node: Any,
    tracker: Any,
    start_retrier: RetrierFactory,
    instances: int,
    room: int,
) -> AsyncIterator[tuple[RunningNode, StoreSCP, dict[str, Any]]]:
    """A move to storescp with room for ``room`` instances, the retrier stopped; room is
    made once the move has failed, then the retrier starts and the move completes. The
    destination runs until exit."""
    with small_filesystem(tmp_path / "full", files=room) as folder, storescp(folder) as peer:
        node: RunningNode = await start_node(
            instances=instances, destinations={"STORESCP": peer.port}
        )
        await movescu(node, "STORESCP")
        await moved(node)
        await asyncio.to_thread(make_room, folder)
        await start_retrier()
        move = await settled(tracker.db, node, "completed", within=90)
        yield node, peer, move


async def test_full_destination_is_retried_once_space_is_freed(
    tmp_path: Path,
    start_node: Any,
    start_tracker: Any,
    start_retrier: RetrierFactory,
    services: Services,
) -> None:
    # given storescp writing into a filesystem with room for 10 instances, and a 30-instance move
    tracker = await start_tracker(retries=True)
    await stopped_retrier(start_retrier, services)
    # when the move has left 20 instances refused with 0xA700, and the space is freed
    full = through_full_destination(tmp_path, start_node, tracker, start_retrier, 30, room=10)
    async with full as (_, peer, move):
        stored = len(peer.files())
    # then the retries completed the move
    # (the 20 refused, and any that a loaded machine made time out as well)
    refused = [e["what"] for e in move["timeline"] if "attempt 1: 0xA700" in e["what"]]
    assert refused
    assert move["counts"] == {"remaining": 0, "completed": 30, "warning": 0, "failed": 0}
    assert len(move["retried_instances"]) >= 20
    assert_retried(move)
    assert stored == 30


async def test_aborting_destination_is_retried_and_completes(
    tmp_path: Path,
    start_node: Any,
    start_tracker: Any,
    start_retrier: RetrierFactory,
    services: Services,
) -> None:
    # given a destination that aborts on the first C-STORE-RQ
    tracker = await start_tracker(retries=True)
    await stopped_retrier(start_retrier, services)
    port = free_port()
    with storescp(tmp_path / "aborting", "--abort-after", port=port):
        node: RunningNode = await start_node(
            instances=10, destinations={"STORESCP": port}, dimse_timeout=5.0
        )
        await movescu(node, "STORESCP")
        await moved(node)  # the aborted instance, and the nine never sent
    # when the destination comes back without the fault before the retrier decides
    with storescp(tmp_path / "received", port=port) as peer:
        await start_retrier()
        move = await settled(tracker.db, node, "completed", within=90)
        stored = len(peer.files())
    # then the aborted instance and the nine never sent were all retried
    timeline = " ".join(e["what"] for e in move["timeline"])
    assert "attempt 1: no response: aborted" in timeline
    assert "instance(s) attempt 1: not sent: association_lost" in timeline
    assert len(move["retried_instances"]) == 10
    assert move["counts"]["completed"] == 10
    assert_retried(move)
    assert stored == 10


async def test_permanent_failure_status_is_not_retried(
    tmp_path: Path, start_node: Any, start_tracker: Any, start_retrier: RetrierFactory
) -> None:
    # given a destination that answers 0xA900 (data set does not match) for three instances
    tracker = await start_tracker(retries=True)
    retrier, _ = await start_retrier()
    refused: set[str] = set()
    with answering_scp(lambda uid: 0xA900 if uid in refused else 0x0000) as port:
        node: RunningNode = await start_node(instances=10, destinations={"ODDSCP": port})
        refused.update(node.instance_uids[:3])
        # when the move runs
        await movescu(node, "ODDSCP")
        move = await settled(tracker.db, node, "completed_with_failures")
    # then the three are given up at once, with the reason, and parked
    failed = move["failed_instances"]
    assert {f["sop_instance_uid"] for f in failed} == set(node.instance_uids[:3])
    assert all(f["attempts"] == 1 and f["status"] == "0xA900" for f in failed)
    assert all(f["gave_up"].startswith("permanent failure, not retried: 0xA900") for f in failed)
    parked = retries(retrier, node)
    assert [p["state"] for p in parked] == ["parked"] * 3
    assert all("Data Set does not match" in p["reason"] for p in parked)


async def test_permanent_association_rejection_is_not_retried(
    tmp_path: Path, start_node: Any, start_tracker: Any, start_retrier: RetrierFactory
) -> None:
    # given a dcmtk destination that refuses every association
    tracker = await start_tracker(retries=True)
    await start_retrier()
    with refusing_scp() as port:
        node: RunningNode = await start_node(instances=5, destinations={"STORESCP": port})
        await movescu(node, "STORESCP")
        await settled(tracker.db, node, "failed")
        # (the move is final at once; the retrier's give-up decisions reach the tracker later)

        def given_up() -> bool:
            [move] = moves_of(tracker.db, node)
            return bool(move["failed_instances"]) and all(
                f["gave_up"] for f in move["failed_instances"]
            )

        await until(given_up, what="the retrier's give-up of every instance")
        [move] = moves_of(tracker.db, node)
    # then every instance is reported not sent, and given up without a retry: the move failed
    assert move["counts"]["failed"] == 5
    assert "rejected_permanent" in move["reason"]
    assert all(
        f["reason"].startswith("not sent: rejected_permanent") for f in move["failed_instances"]
    )
    assert all(f["gave_up"] for f in move["failed_instances"])


async def test_retries_fire_after_the_retrier_and_the_node_restart(
    tmp_path: Path,
    start_node: Any,
    start_tracker: Any,
    start_retrier: RetrierFactory,
    services: Services,
) -> None:
    # given a destination that is not listening yet, a move to it, and the node stopped
    tracker = await start_tracker(retries=True)
    await stopped_retrier(start_retrier, services)
    port = free_port()
    node: RunningNode = await start_node(instances=10, destinations={"STORESCP": port})
    await movescu(node, "STORESCP")
    await moved(node)
    await node.stop()
    # when the retrier schedules the retry and stops, and both start again
    retrier, stop_retrier = await start_retrier()
    await scheduled(retrier, node, 1)
    await services.stop(stop_retrier)
    await start_retrier()
    with storescp(tmp_path / "received", port=port) as peer:
        again = await start_node(again=node)
        # then the retry, held by RabbitMQ meanwhile, completes the move
        move = await settled(tracker.db, again, "completed", within=90)
        stored = len(peer.files())
    assert stored == 10
    assert_retried(move)
    assert retries(retrier, node) == [] or all(r["state"] == "sent" for r in retries(retrier, node))


async def test_a_failure_delivered_twice_is_resent_once(
    tmp_path: Path,
    amqp_url: str,
    start_node: Any,
    start_tracker: Any,
    start_retrier: RetrierFactory,
    services: Services,
) -> None:
    # given a move whose 5 refused instances were retried and completed
    tracker = await start_tracker(retries=True)
    retrier = await stopped_retrier(start_retrier, services)
    full = through_full_destination(tmp_path, start_node, tracker, start_retrier, 10, room=5)
    async with full as (node, _, _):
        # when a failure event and the resend command it caused are both delivered again
        events = await log_until_now(amqp_url, node.source)
        failure = next(e for e in of_type(events, RECEIVED) if e.data.status == 0xA700)  # type: ignore[attr-defined]
        store = RetryStore(retrier.db)
        command = next(
            item.command
            for item in store.items(("scheduled",))
            if item.data.node_id == node.settings.node_id
        )
        store.close()
        # (then the failure of an instance the node does not hold, in a move of its own: its
        # retry reaches the node after the duplicates, and comes back as one unsent event)
        marker = marker_failure(failure)
        connection = await connect(amqp_url, "dimsebus-test-duplicates")
        async with connection:
            publisher = Publisher(await confirming_channel(connection))
            await publisher.publish(failure)
            await publisher.publish_all([command, command], COMMANDS_EXCHANGE)
            await publisher.publish(marker)
        marked = str(marker.data.operation.id)
        await read_events(
            amqp_url,
            node.source,
            lambda found: any(e.subject == marked for e in of_type(found, UNSENT)),
        )
        events = [
            e
            for e in await log_until_now(amqp_url, node.source)
            if getattr(e.data, "operation", None) != marker.data.operation
        ]
    # then every instance was sent at most twice: the first attempt and one retry
    # (the log holds the re-delivered failure event twice: same id, counted once)
    attempts: dict[str, list[int]] = {}
    for event in {e.id: e for e in of_type(events, RECEIVED)}.values():
        data: Any = event.data
        attempts.setdefault(data.affected_sop_instance_uid, []).append(data.attempt)
    assert sorted(len(a) for a in attempts.values()) == [1] * 5 + [2] * 5
    assert all(sorted(a) == [1, 2] for a in attempts.values() if len(a) == 2)
    assert not of_type(events, UNSENT)
    assert isinstance(command, ev.ResendSubOperations)


def marker_failure(failure: Any) -> Any:
    """``failure`` of an instance the node does not hold, in a move of its own."""
    data = failure.data.model_copy(
        update={
            "operation": ev.Operation(kind="move", id=uuid.uuid4()),
            "affected_sop_instance_uid": "1.2.826.0.1.3680043.8.498.1",
        }
    )
    return failure.model_copy(update={"id": uuid.uuid4(), "data": data})


async def test_a_send_job_is_retried_from_the_same_files(
    tmp_path: Path,
    amqp_url: str,
    start_node: Any,
    start_retrier: RetrierFactory,
    services: Services,
) -> None:
    # given a node, and `dimsebus send` run with the node's id and archive
    await stopped_retrier(start_retrier, services)
    node: RunningNode = await start_node(instances=1)
    config = tmp_path / "send.toml"
    config.write_text(
        f'node_id = "{node.settings.node_id}"\narchive_path = "{node.settings.archive_path}"\n'
    )
    files = write_study(tmp_path / "to-send", 12, seed="send-retry")
    with small_filesystem(tmp_path / "full", files=4) as folder, storescp(folder) as peer:
        # when it sends 12 files to a destination with room for 4, and room is made later
        await run_tool(
            sys.executable,
            "-m",
            "dimsebus.services",
            "send",
            "--to",
            f"STORESCP@127.0.0.1:{peer.port}",
            "--config",
            str(config),
            "--outbox",
            str(tmp_path / "send-outbox.sqlite"),
            "--amqp-url",
            amqp_url,
            str(tmp_path / "to-send"),
        )
        await read_events(amqp_url, node.source, lambda found: len(responses(found, 1)) == 12)
        await asyncio.to_thread(make_room, folder)
        await start_retrier()
        events = await read_events(
            amqp_url, node.source, lambda found: len(responses(found, 2)) == 8, within=60
        )
        stored = len(peer.files())
    # then the node sent the 8 refused files again, as attempt 2 of the same operation
    first, second = responses(events, 1), responses(events, 2)
    assert len(first) == 12
    assert sorted(e.data.status for e in second) == [0] * 8
    assert {e.data.operation for e in second} == {first[0].data.operation}
    assert stored == len(files)


async def cli(*argv: str) -> str:
    """Run `dimsebus ARGV...` to completion; its output."""
    return await run_tool(sys.executable, "-m", "dimsebus.services", *argv)


@pytest.mark.parametrize("how", ["moves retry", "retries requeue"])
async def test_operator_retries_what_was_given_up(
    how: str,
    tmp_path: Path,
    amqp_url: str,
    start_node: Any,
    start_tracker: Any,
    start_retrier: RetrierFactory,
) -> None:
    # given a move given up on because its destination refused the association
    tracker = await start_tracker(retries=True)
    retrier, _ = await start_retrier()
    port = free_port()
    with refusing_scp(port=port):
        node: RunningNode = await start_node(instances=5, destinations={"STORESCP": port})
        await movescu(node, "STORESCP")
        given_up = await settled(tracker.db, node, "failed")  # refused for good, until now
    assert "parked" in {r["state"] for r in retries(retrier, node)}
    # when the destination accepts again and an operator retries
    with storescp(tmp_path / "received", port=port) as peer:
        if how == "moves retry":
            await cli(
                "moves",
                "retry",
                given_up["move_id"][:13],
                "--db",
                tracker.db,
                "--amqp-url",
                amqp_url,
            )
        else:
            await cli(
                "retries", "requeue", "--all", "--db", str(retrier.db), "--amqp-url", amqp_url
            )
        move = await settled(tracker.db, node, "completed", within=60)
        stored = len(peer.files())
    # then every instance arrives, as a later attempt of the same move (usually the second;
    # a refusal can first look like a lost connection, which is retried once before parking)
    assert stored == 5
    assert len(move["retried_instances"]) == 5
    assert min(r["attempts"] for r in move["retried_instances"]) >= 2
    if how == "retries requeue":
        assert "parked" not in {r["state"] for r in retries(retrier, node)}  # all requeued
        await cli("retries", "purge", "--db", str(retrier.db), "--amqp-url", amqp_url)
