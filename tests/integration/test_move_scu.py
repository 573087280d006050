"""The node as Move SCU (issue 18, item 3): dcmtk's dcmqrscp is the remote archive.

``dimsebus move`` publishes a ``dimsebus.command.move``; the node C-MOVEs from
dcmqrscp to storescp, to a pynetdicom SCP that refuses some instances, or to
itself, and every C-MOVE-RSP (and every C-STORE it answers for its own move)
is an event on the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import ChannelNotFoundEntity

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.bus.connection import confirming_channel
from dimsebus.services.bus.consumer import REASON_HEADER
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.topology import COMMANDS_EXCHANGE
from dimsebus.services.clock import utc_now
from dimsebus.services.node.config import Peer
from dimsebus.services.node.synthetic import write_study
from dimsebus.services.retrier.app import RetrierSettings, run_retrier
from dimsebus.services.retrier.policy import RetryPolicy
from tests.integration.conftest import (
    TEST_PEERS,
    RunningNode,
    Services,
    of_type,
    read_events,
    settled,
)
from tests.integration.peers import (
    ENV,
    answering_scp,
    dcmtk,
    free_port,
    on_a_free_port,
    storescp,
)

pytestmark = pytest.mark.integration

QRSCP = "QRSCP"


@dataclass
class Archive:
    """A running dcmqrscp and the study it holds."""

    port: int
    study_uid: str
    series_uid: str
    instance_uids: list[str]

    @property
    def address(self) -> str:
        return f"{QRSCP}@127.0.0.1:{self.port}"


@contextlib.contextmanager
def dcmqrscp(folder: Path, count: int, destinations: dict[str, int]) -> Iterator[Archive]:
    """dcmqrscp serving a synthetic study of ``count`` instances, moving to ``destinations``.

    On a free port (``on_a_free_port``: another test worker may take the one chosen).
    """
    storage = folder / "storage"
    storage.mkdir(parents=True)
    paths = write_study(folder / "study", count, patient_id="QR1", seed=str(folder))
    subprocess.run([dcmtk("dcmqridx"), str(storage), *map(str, paths)], check=True, env=ENV)
    hosts = "\n".join(
        f"dest{n} = ({ae}, 127.0.0.1, {dest_port})"
        for n, (ae, dest_port) in enumerate(destinations.items())
    )
    config = folder / "dcmqrscp.cfg"

    def start(port: int) -> subprocess.Popen[bytes]:
        config.write_text(
            f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{QRSCP} {storage} RW (200, 1024mb) ANY\nAETable END\n"
        )
        with (folder / "dcmqrscp.log").open("ab") as log:
            return subprocess.Popen(
                [dcmtk("dcmqrscp"), "-d", "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=ENV,
            )

    with on_a_free_port(start, None, f"dcmqrscp (log in {folder})") as (port, _):
        from pydicom import dcmread

        datasets = [dcmread(path, stop_before_pixels=True) for path in paths]
        yield Archive(
            port,
            str(datasets[0].StudyInstanceUID),
            str(datasets[0].SeriesInstanceUID),
            [str(ds.SOPInstanceUID) for ds in datasets],
        )


async def commands_queue(connection: AbstractRobustConnection, node: RunningNode) -> None:
    """Wait until the node has declared its command queue (it does so once it runs)."""
    async with asyncio.timeout(30):
        while True:
            channel = await connection.channel()
            try:
                await channel.get_queue(f"dimsebus.node.{node.settings.node_id}", ensure=True)
                return
            except ChannelNotFoundEntity:
                await asyncio.sleep(0.1)
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()


async def move(node: RunningNode, archive: Archive, destination: str, *keys: str) -> str:
    """``dimsebus move`` to ``node``; returns the operation id it printed."""
    argv = [sys.executable, "-m", "dimsebus.services", "move", "--from", archive.address, "--to"]
    result = await asyncio.to_thread(
        subprocess.run,
        [*argv, destination, *keys, "--node", node.settings.node_id],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, "DIMSEBUS_AMQP_URL": node.settings.amqp_url},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def of_operation(events: list[CloudEvent], event_type: str, operation: str) -> list[Any]:
    """The events of one type that belong to ``operation``."""
    return [e for e in of_type(events, event_type) if str(e.data.operation.id) == operation]  # type: ignore[attr-defined]


def final_response(operation: str, attempt: int = 1) -> Callable[[list[CloudEvent]], bool]:
    """Whether the log holds the move's final C-MOVE-RSP event (of ``attempt``)."""

    def seen(events: list[CloudEvent]) -> bool:
        responses = of_operation(events, "dicom.move.response.received", operation)
        return any(r.data.final and r.data.attempt == attempt for r in responses)

    return seen


async def test_a_study_is_moved_to_storescp_and_every_response_is_an_event(
    tmp_path: Path, start_node: Any, connection: AbstractRobustConnection
) -> None:
    # given dcmqrscp holding a study of 5 instances, which it may move to storescp
    with (
        storescp(tmp_path / "received") as destination,
        dcmqrscp(tmp_path / "qr", 5, {destination.ae_title: destination.port}) as archive,
    ):
        node = await start_node(instances=1)
        await commands_queue(connection, node)
        # when the node is told to move the study to storescp
        operation = await move(node, archive, destination.ae_title, "--study", archive.study_uid)
        events = await read_events(node.settings.amqp_url, node.source, final_response(operation))
        # then each C-MOVE-RSP is an event of the move: pending ones counting down, then success
        responses = [
            r.data for r in of_operation(events, "dicom.move.response.received", operation)
        ]
        pending, final = responses[:-1], responses[-1]
        assert final.final
        assert (final.status, final.status_category) == (0x0000, "success")
        assert (final.counts.completed, final.counts.failed) == (5, 0)
        assert final.failed_sop_instance_uids == ()
        assert pending
        assert all(r.status_category == "pending" and not r.final for r in pending)
        assert [r.counts.remaining for r in pending] == sorted(
            (r.counts.remaining for r in pending), reverse=True
        )
        assert {r.message_id for r in responses} == {final.message_id}
        assert final.association.peer_ae_title == QRSCP
        assert final.move_destination == destination.ae_title
        assert final.study_instance_uid == archive.study_uid
        assert final.source is not None
        assert (final.source.ae_title, final.source.port) == (QRSCP, archive.port)
        # and storescp got the study
        assert len(destination.files()) == 5


async def test_instances_refused_by_the_destination_are_listed_in_the_final_response(
    tmp_path: Path, start_node: Any, connection: AbstractRobustConnection
) -> None:
    # given a destination that refuses one instance for want of room
    refused: set[str] = set()
    with (
        answering_scp(lambda uid: 0xA700 if uid in refused else 0x0000, "ODDSCP") as port,
        dcmqrscp(tmp_path / "qr", 4, {"ODDSCP": port}) as archive,
    ):
        refused.add(archive.instance_uids[1])
        node = await start_node(instances=1)
        await commands_queue(connection, node)
        # when three of its instances are moved at IMAGE level
        asked = archive.instance_uids[:3]
        keys = ["--study", archive.study_uid, "--series", archive.series_uid]
        for uid in asked:
            keys += ["--instance", uid]
        operation = await move(node, archive, "ODDSCP", *keys)
        events = await read_events(node.settings.amqp_url, node.source, final_response(operation))
    # then the final response is a warning naming exactly the refused instance
    final = of_operation(events, "dicom.move.response.received", operation)[-1].data
    assert final.final
    assert final.status_category in ("warning", "failure")
    assert (final.counts.completed, final.counts.failed) == (2, 1)
    assert final.failed_sop_instance_uids == (archive.instance_uids[1],)


async def test_instances_are_moved_without_their_series_which_the_node_finds(
    tmp_path: Path, start_node: Any, connection: AbstractRobustConnection
) -> None:
    # given dcmqrscp (hierarchical: IMAGE level needs the series) holding 4 instances
    with (
        storescp(tmp_path / "received") as destination,
        dcmqrscp(tmp_path / "qr", 4, {destination.ae_title: destination.port}) as archive,
    ):
        node = await start_node(instances=1)
        await commands_queue(connection, node)
        # when two of them are moved by study and instance only
        asked = archive.instance_uids[1:3]
        keys = ["--study", archive.study_uid, "--instance", asked[0], "--instance", asked[1]]
        operation = await move(node, archive, destination.ae_title, *keys)
        events = await read_events(node.settings.amqp_url, node.source, final_response(operation))
        # then the node found their series and the archive moved exactly those two
        final = of_operation(events, "dicom.move.response.received", operation)[-1].data
        assert (final.status_category, final.counts.completed, final.counts.failed) == (
            "success",
            2,
            0,
        )
        assert len(destination.files()) == 2


async def test_the_node_as_destination_records_each_store_of_its_own_move(
    tmp_path: Path, start_node: Any, connection: AbstractRobustConnection
) -> None:
    # given a node that lets dcmqrscp store to it, and dcmqrscp that knows the node
    peers = {**TEST_PEERS, QRSCP: Peer(host="127.0.0.1", allow=frozenset({"echo", "store"}))}
    node = await start_node(instances=1, peers=peers)
    with dcmqrscp(tmp_path / "qr", 4, {node.settings.ae_title: node.settings.port}) as archive:
        before = node.node.archive.count()
        await commands_queue(connection, node)
        # when the node moves the series to itself
        keys = ("--study", archive.study_uid, "--series", archive.series_uid)
        operation = await move(node, archive, node.settings.ae_title, *keys)

        def stored(events: list[CloudEvent]) -> bool:
            sent = of_operation(events, "dicom.cstore.response.sent", operation)
            return final_response(operation)(events) and len(sent) >= 4

        events = await read_events(node.settings.amqp_url, node.source, stored)
    # then each C-STORE it received for the move is an event of the move, answered success
    final = of_operation(events, "dicom.move.response.received", operation)[-1].data
    assert (final.status_category, final.counts.completed) == ("success", 4)
    sent = [e.data for e in of_operation(events, "dicom.cstore.response.sent", operation)]
    assert sorted(s.affected_sop_instance_uid for s in sent) == sorted(archive.instance_uids)
    assert all(s.status_category == "success" for s in sent)
    assert {s.move_originator.message_id for s in sent} == {final.message_id}
    assert {s.move_originator.ae_title for s in sent} == {node.settings.ae_title}
    assert {s.association.peer_ae_title for s in sent} == {QRSCP}
    assert {s.study_instance_uid for s in sent} == {archive.study_uid}
    # and the node stored them
    assert node.node.archive.count() == before + 4


async def test_the_tracker_follows_the_nodes_move_to_itself(
    tmp_path: Path, start_node: Any, start_tracker: Any, connection: AbstractRobustConnection
) -> None:
    # given a tracker, and a node that dcmqrscp may store to
    settings = await start_tracker()
    peers = {**TEST_PEERS, QRSCP: Peer(host="127.0.0.1", allow=frozenset({"echo", "store"}))}
    node = await start_node(instances=1, peers=peers)
    with dcmqrscp(tmp_path / "qr", 3, {node.settings.ae_title: node.settings.port}) as archive:
        await commands_queue(connection, node)
        # when the node moves the study to itself
        operation = await move(node, archive, node.settings.ae_title, "--study", archive.study_uid)
        # then the tracker reports the move completed, with every sub-operation counted
        found = await settled(settings.db, node, "completed")
    assert found["move_id"] == operation
    assert found["counts"]["completed"] == 3
    assert found["destination_ae_title"] == node.settings.ae_title


async def test_the_tracker_follows_the_nodes_move_to_another_destination_by_its_counts(
    tmp_path: Path, start_node: Any, start_tracker: Any, connection: AbstractRobustConnection
) -> None:
    # given a tracker with retries on, and storescp as the destination
    settings = await start_tracker(retries=True)
    with (
        storescp(tmp_path / "received") as destination,
        dcmqrscp(tmp_path / "qr", 3, {destination.ae_title: destination.port}) as archive,
    ):
        node = await start_node(instances=1)
        await commands_queue(connection, node)
        # when the node moves the study to storescp (no C-STORE of it reaches the node)
        operation = await move(node, archive, destination.ae_title, "--study", archive.study_uid)
        # then the tracker reports it completed by the final response's counts
        found = await settled(settings.db, node, "completed")
    assert found["move_id"] == operation
    assert found["counts"] == {"remaining": 0, "completed": 3, "warning": 0, "failed": 0}
    assert found["destination_ae_title"] == destination.ae_title


async def test_the_tracker_lists_what_another_destination_refused(
    tmp_path: Path, start_node: Any, start_tracker: Any, connection: AbstractRobustConnection
) -> None:
    # given a tracker with retries off (no retrier decides), and a destination that
    # refuses one instance
    settings = await start_tracker()
    refused: set[str] = set()
    with (
        answering_scp(lambda uid: 0xA700 if uid in refused else 0x0000, "ODDSCP") as port,
        dcmqrscp(tmp_path / "qr", 3, {"ODDSCP": port}) as archive,
    ):
        refused.add(archive.instance_uids[1])
        node = await start_node(instances=1)
        await commands_queue(connection, node)
        # when the node moves the study there
        await move(node, archive, "ODDSCP", "--study", archive.study_uid)
        # then the move completes with that one failure, named
        found = await settled(settings.db, node, "completed_with_failures")
    assert found["counts"] == {"remaining": 0, "completed": 2, "warning": 0, "failed": 1}
    failed = [f["sop_instance_uid"] for f in found["failed_instances"]]
    assert failed == [archive.instance_uids[1]]


async def test_the_retrier_re_issues_the_failed_instances_and_the_move_completes(
    tmp_path: Path,
    amqp_url: str,
    start_node: Any,
    start_tracker: Any,
    services: Services,
    connection: AbstractRobustConnection,
) -> None:
    # given a destination that refuses (0xA700) the first C-STORE of two instances and
    # takes them the next time, a tracker with retries on and a retrier with a 50 ms delay
    refused: set[str] = set()
    stores: dict[str, int] = {}

    def status_for(uid: str) -> int:
        stores[uid] = stores.get(uid, 0) + 1
        return 0xA700 if uid in refused and stores[uid] == 1 else 0x0000

    tracker = await start_tracker(retries=True)
    policy = RetryPolicy(max_attempts=3, initial_delay=0.05, multiplier=1.0, jitter=0.0)
    retrier = RetrierSettings(
        amqp_url=amqp_url, db=tmp_path / "retrier.sqlite", retrier_id="pulls", policy=policy
    )
    await services.start(run_retrier, retrier)
    with (
        answering_scp(status_for, "ODDSCP") as port,
        dcmqrscp(tmp_path / "qr", 4, {"ODDSCP": port}) as archive,
    ):
        refused.update({archive.instance_uids[1], archive.instance_uids[3]})
        node = await start_node(instances=1)
        await commands_queue(connection, node)
        # when the node moves the study there
        operation = await move(node, archive, "ODDSCP", "--study", archive.study_uid)
        # then the move ends completed: the retry brought the two refused instances
        found = await settled(tracker.db, node, "completed", within=90)
    assert found["move_id"] == operation
    assert found["counts"] == {"remaining": 0, "completed": 4, "warning": 0, "failed": 0}
    retried = {r["sop_instance_uid"]: r["attempts"] for r in found["retried_instances"]}
    assert retried == dict.fromkeys(sorted(refused), 2), found["timeline"]
    # and the destination got exactly the refused ones twice, the others once
    assert stores == {uid: 2 if uid in refused else 1 for uid in archive.instance_uids}
    # and the retry was one IMAGE-level C-MOVE naming exactly them, which succeeded
    events = await read_events(node.settings.amqp_url, node.source, final_response(operation, 2))
    finals = [
        r.data
        for r in of_operation(events, "dicom.move.response.received", operation)
        if r.data.final
    ]
    assert [(r.attempt, r.status_category) for r in finals] == [(1, "warning"), (2, "success")]
    assert sorted(finals[0].failed_sop_instance_uids) == sorted(refused)
    assert finals[0].sop_instance_uids is None  # the first C-MOVE was at STUDY level
    assert sorted(finals[1].sop_instance_uids or ()) == sorted(refused)  # IMAGE level
    # as dcmqrscp received it: the study, then exactly the refused instances
    requests = move_requests(tmp_path / "qr" / "dcmqrscp.log")
    assert requests == [("STUDY", set()), ("IMAGE", refused)]
    # and the tracker published one dimsebus.move.finished: completed
    finished = await finished_of(amqp_url, operation)
    assert [(f.data.outcome, f.data.revision) for f in finished] == [("completed", 1)]


def move_requests(log: Path) -> list[tuple[str, set[str]]]:
    """Each C-MOVE-RQ identifier in dcmqrscp's log: its level and SOP Instance UIDs."""
    found: list[tuple[str, set[str]]] = []
    for line in log.read_text(errors="replace").splitlines():
        if "Move SCP Request Identifiers:" in line:
            found.append(("", set()))
        elif found and line.startswith("I: (") and not found[-1][0]:
            value = line.partition("[")[2].partition("]")[0]
            if "SOPInstanceUID" in line and value:
                found[-1][1].update(value.split("\\"))
            elif "QueryRetrieveLevel" in line:
                found[-1] = (value, found[-1][1])
    return found


async def test_a_retry_whose_archive_cannot_be_reached_is_unsent_naming_the_archive(
    amqp_url: str, start_node: Any, connection: AbstractRobustConnection
) -> None:
    # given a node, and a retry of a pull from an archive where nothing listens
    node = await start_node(instances=1)
    await commands_queue(connection, node)
    archive = ev.RemoteAE(ae_title=QRSCP, host="127.0.0.1", port=free_port())
    operation = ev.Operation(kind="move", id=uuid.uuid4())
    command = ev.ResendSubOperations.model_validate(
        {
            "id": uuid.uuid4(),
            "source": "dimsebus://retrier/test",
            "time": utc_now(),
            "subject": str(operation.id),
            "data": ev.ResendData(
                operation=operation,
                node_id=node.settings.node_id,
                sop_instance_uids=("1.2.826.0.1.3680043.8.498.7",),
                destination_ae_title="STORESCP",
                move_originator=None,
                attempt=2,
                source=archive,
                study_instance_uid="1.2.826.0.1.3680043.8.498.1",
            ),
        }
    )
    # when the node gets the command
    await Publisher(await confirming_channel(connection)).publish(command, COMMANDS_EXCHANGE)

    def unsent(events: list[CloudEvent]) -> bool:
        return bool(of_operation(events, "dicom.cstore.unsent", str(operation.id)))

    events = await read_events(amqp_url, node.source, unsent)
    # then it says the instance was not sent, naming the archive, so a retry asks it again
    found = of_operation(events, "dicom.cstore.unsent", str(operation.id))
    assert len(found) == 1
    data = found[0].data
    assert (data.reason, data.attempt, data.sop_instance_uids) == (
        "unreachable",
        2,
        command.data.sop_instance_uids,
    )
    assert (data.source, data.study_instance_uid) == (archive, command.data.study_instance_uid)
    assert data.destination_ae_title == "STORESCP"


async def finished_of(amqp_url: str, operation: str) -> list[Any]:
    """The tracker's ``dimsebus.move.finished`` events of one move, once there is one."""

    def one(events: list[CloudEvent]) -> bool:
        return bool(of_operation(events, "dimsebus.move.finished", operation))

    events = await read_events(amqp_url, "dimsebus://tracker/t1", one)
    return of_operation(events, "dimsebus.move.finished", operation)


async def test_a_move_from_an_archive_that_cannot_be_reached_is_parked_with_the_reason(
    start_node: Any, connection: AbstractRobustConnection
) -> None:
    # given a node, and an archive address where nothing listens
    node = await start_node(instances=1)
    await commands_queue(connection, node)
    nowhere = Archive(free_port(), "1.2.3", "1.2.3.4", [])
    # when the node is told to move from it
    operation = await move(node, nowhere, "STORESCP", "--study", "1.2.3")
    # then the command is parked in the node's parking queue, saying why
    reason = await parked_reason(connection, node)
    assert operation in reason
    assert "no association with QRSCP@127.0.0.1" in reason


async def test_an_instance_the_archive_does_not_hold_parks_the_move_naming_it(
    tmp_path: Path, start_node: Any, connection: AbstractRobustConnection
) -> None:
    # given dcmqrscp holding a study of 2 instances
    with dcmqrscp(tmp_path / "qr", 2, {"STORESCP": free_port()}) as archive:
        node = await start_node(instances=1)
        await commands_queue(connection, node)
        # when an instance it does not hold is moved without its series
        missing = "1.2.826.0.1.3680043.8.498.999"
        await move(node, archive, "STORESCP", "--study", archive.study_uid, "--instance", missing)
        # then the command is parked, naming the instance
        reason = await parked_reason(connection, node)
    assert f"not in study {archive.study_uid}" in reason
    assert missing in reason


async def parked_reason(connection: AbstractRobustConnection, node: RunningNode) -> str:
    """The reason of the first command parked in the node's parking queue."""
    channel = await connection.channel()
    parking = await channel.get_queue(f"dimsebus.node.{node.settings.node_id}.dead", ensure=False)
    async with asyncio.timeout(60):
        while (message := await parking.get(no_ack=True, fail=False)) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return str((message.headers or {}).get(REASON_HEADER, ""))
