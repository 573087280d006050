"""Fixtures for node tests: a running node with a synthetic archive, and reading its events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiormq.exceptions import AMQPError

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.log import LogReader
from dimsebus.services.bus.outbox import read_depth
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.clock import utc_now
from dimsebus.services.node.app import Node
from dimsebus.services.node.archive import Archive
from dimsebus.services.node.config import Destination, NodeSettings, Peer
from dimsebus.services.node.synthetic import write_study
from dimsebus.services.tracker.api import load_views
from dimsebus.services.tracker.app import TrackerSettings, run_tracker
from dimsebus.services.tracker.store import open_store
from tests.integration.peers import dcmtk, free_port, run_tool, wait_for_port

EVERY_SERVICE = frozenset({"echo", "store", "find", "move", "get"})
TEST_PEERS = {
    ae: Peer(host="127.0.0.1", allow=EVERY_SERVICE)  # type: ignore[arg-type]
    for ae in ("MOVESCU", "GETSCU", "FINDSCU", "STORESCU")
}
"""The calling AE titles the tests' dcmtk and pynetdicom peers use, as a site would list them."""


@dataclass
class RunningNode:
    """A node serving on loopback, and the study in its archive."""

    settings: NodeSettings
    node: Node
    study_uid: str
    instance_uids: list[str]
    stopped: asyncio.Event
    task: asyncio.Task[None]

    async def stop(self) -> None:
        """Stop serving, as SIGTERM would."""
        self.stopped.set()
        await asyncio.wait_for(self.task, 30)

    @property
    def source(self) -> str:
        """The ``source`` of the node's events."""
        return f"dimsebus://node/{self.settings.node_id}"


StartNode = Callable[..., "asyncio.Future[RunningNode]"]


@pytest.fixture
async def start_node(tmp_path: Path, amqp_url: str) -> AsyncIterator[Callable[..., object]]:
    """Start nodes (``await start_node(instances=50, destinations={...})``); stopped afterwards."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(
        instances: int = 50,
        destinations: dict[str, int] | None = None,
        again: RunningNode | None = None,
        **settings: object,
    ) -> RunningNode:
        if again is not None:  # the same node, archive and outbox, started anew
            config, study_uid, uids = again.settings, again.study_uid, again.instance_uids
        else:
            config, study_uid, uids = _new_node(
                tmp_path, amqp_url, instances, destinations, settings
            )
        node = Node.open(config)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(node.serve(stop, ready))
        running.append((stop, task))
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.to_thread(wait_for_port, config.port)
        return RunningNode(config, node, study_uid, uids, stop, task)

    yield start
    await _stop_together(running)


def _new_node(
    tmp_path: Path,
    amqp_url: str,
    instances: int,
    destinations: dict[str, int] | None,
    settings: dict[str, object],
) -> tuple[NodeSettings, str, list[str]]:
    node_id = f"test-{uuid.uuid4().hex[:8]}"
    root = tmp_path / node_id
    settings = {"peers": TEST_PEERS, **settings}
    config = NodeSettings(
        node_id=node_id,
        amqp_url=amqp_url,
        port=free_port(),
        host="127.0.0.1",
        archive_path=root / "archive",
        outbox_path=root / "outbox.sqlite",
        destinations={
            ae: Destination(host="127.0.0.1", port=port)
            for ae, port in (destinations or {}).items()
        },
        **settings,  # type: ignore[arg-type]
    )
    paths = write_study(root / "study", instances, patient_id=node_id[-8:], seed=node_id)
    archive = Archive(config.archive_path)
    stored = [archive.import_file(path) for path in paths]
    archive.close()
    study_uid = str(stored[0].read().StudyInstanceUID)
    return config, study_uid, [s.sop_instance_uid for s in stored]


ServiceRun = Callable[[Any, asyncio.Event, asyncio.Event], Coroutine[Any, Any, None]]


class Services:
    """Long-running services (``run_tracker``, ``run_retrier``, ``run_audit``) in-process."""

    def __init__(self) -> None:
        self._running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(self, run: ServiceRun, settings: Any) -> asyncio.Event:
        """Start ``run(settings, stop, ready)``; returns once ready, with its stop event."""
        stop, ready = asyncio.Event(), asyncio.Event()
        self._running.append((stop, asyncio.create_task(run(settings, stop, ready))))
        await asyncio.wait_for(ready.wait(), 20)
        return stop

    async def stop(self, stop: asyncio.Event) -> None:
        """Stop the service that ``start`` returned ``stop`` for, and wait for it to end."""
        for event, task in self._running:
            if event is stop:
                event.set()
                await asyncio.wait_for(task, 30)

    async def stop_all(self) -> None:
        """Stop every service started, and wait for each to end."""
        await _stop_together(self._running)


async def _stop_together(running: list[tuple[asyncio.Event, asyncio.Task[None]]]) -> None:
    """Set every stop event at once, then wait for the tasks: each takes a while to end."""
    for stop, _ in running:
        stop.set()
    for _, task in running:
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    """Start services in-process; all are stopped after the test."""
    running = Services()
    yield running
    await running.stop_all()


@pytest.fixture
def start_tracker(
    tmp_path: Path, amqp_url: str, services: Services
) -> Callable[..., Awaitable[TrackerSettings]]:
    """Run in-process trackers (``await start_tracker(db=...)``); stopped afterwards."""

    async def start(
        db: Path | str | None = None, name: str = "t1", **extra: Any
    ) -> TrackerSettings:
        settings = TrackerSettings(
            amqp_url=amqp_url,
            db=str(db or tmp_path / f"{name}.sqlite"),
            outbox_path=tmp_path / f"{name}-outbox.sqlite",
            tracker_id=name,
            **extra,
        )
        await services.start(run_tracker, settings)
        return settings

    return start


async def movescu(node: RunningNode, destination: str, *extra: str) -> str:
    """dcmtk's movescu, as AE MOVESCU, asks ``node`` to move its study to ``destination``."""
    return await run_tool(
        dcmtk("movescu"),
        "-v",
        "-S",
        "-aet",
        "MOVESCU",
        "-aec",
        node.settings.ae_title,
        "-aem",
        destination,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={node.study_uid}",
        *extra,
        "127.0.0.1",
        str(node.settings.port),
    )


async def read_events(
    amqp_url: str, source: str, done: Callable[[list[CloudEvent]], bool], within: float = 60.0
) -> list[CloudEvent]:
    """Events from ``source`` on the log (from ``first``), as soon as ``done`` says so."""
    found: list[CloudEvent] = []
    try:
        async with asyncio.timeout(within):
            while True:
                found = []
                try:
                    await _read(amqp_url, source, done, found)
                    return found
                except (AMQPError, OSError):  # the broker is still starting: read again
                    await asyncio.sleep(0.1)
    except TimeoutError:
        return found  # the caller's assertions say what is missing


async def _read(
    amqp_url: str, source: str, done: Callable[[list[CloudEvent]], bool], found: list[CloudEvent]
) -> None:
    connection = await connect(amqp_url, "dimsebus-test-reader")
    async with connection, LogReader(await connection.channel(), "first") as log:
        async for entry in log:
            if entry.event is not None and entry.event.source == source:
                found.append(entry.event)
                if done(found):
                    return


async def until(condition: Callable[[], bool], within: float = 60.0, what: str = "") -> None:
    """Wait until ``condition()`` holds (polled every 20 ms); fail after ``within`` s naming
    ``what`` was awaited."""
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 - polling what a test watches
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"waited {within} s for {what or condition}") from None


def of_type(events: list[CloudEvent], event_type: str) -> list[CloudEvent]:
    """The events of one type."""
    return [event for event in events if event.type == event_type]


def moves_of(db: str, node: RunningNode) -> list[dict[str, Any]]:
    """What `dimsebus moves list --json` prints, for this node's moves (read in-process)."""
    views = load_views(TrackerSettings(db=db))
    return [m for m in json.loads(json.dumps(views)) if m["node_id"] == node.settings.node_id]


async def settled(db: str, node: RunningNode, outcome: str, within: float = 60) -> dict[str, Any]:
    """The node's one move once the tracker reports ``outcome`` for it (its store, polled)."""
    moves: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(within):
            while True:
                moves = await asyncio.to_thread(moves_of, db, node)
                if moves and moves[0]["outcome"] == outcome:
                    return moves[0]
                await asyncio.sleep(0.1)
    except TimeoutError:
        seen = [(m["outcome"], m["counts"]) for m in moves]
        raise AssertionError(
            f"waited {within} s for the move of {node.settings.node_id} to be {outcome}; "
            f"the tracker's store has {seen}"
        ) from None


def log_marker() -> CloudEvent:
    """An event no test waits for: the association release of a peer that never was."""
    association = ev.AssociationRef(
        id=uuid.uuid4(),
        role="acceptor",
        local_ae_title="DIMSEBUS",
        peer_ae_title="MARKER",
        peer_host="127.0.0.1",
        peer_port=1,
    )
    return ev.AssociationReleased.model_validate(
        {
            "id": uuid.uuid4(),
            "source": f"dimsebus://test/marker-{uuid.uuid4().hex[:8]}",
            "time": utc_now(),
            "subject": str(association.id),
            "data": {"association": association, "at": utc_now()},
        }
    )


async def log_until_now(amqp_url: str, source: str) -> list[CloudEvent]:
    """Every event of ``source`` on the log, up to a marker published now.

    The marker is an event of its own source, published after everything the caller
    waited for; the log keeps the order of arrival, so reading up to it reads all of it.
    """
    events, _ = await _to_marker(amqp_url, source)
    return events


async def _to_marker(amqp_url: str, source: str) -> tuple[list[CloudEvent], int]:
    """``source``'s events on the log before a marker published now; the marker's offset."""
    marker = log_marker()
    connection = await connect(amqp_url, "dimsebus-test-marker")
    async with connection:
        await Publisher(await confirming_channel(connection)).publish(marker)
    found: list[CloudEvent] = []

    async def until_marker() -> int:
        connection = await connect(amqp_url, "dimsebus-test-reader")
        async with connection, LogReader(await connection.channel(), "first") as log:
            async for entry in log:
                if entry.event is not None and entry.event.id == marker.id:
                    return entry.offset
                if entry.event is not None and entry.event.source == source:
                    found.append(entry.event)
        raise AssertionError(f"the log ended before the marker {marker.id}")

    try:
        offset = await asyncio.wait_for(until_marker(), 60)
    except TimeoutError:
        raise AssertionError(f"the log did not reach the marker {marker.id} within 60 s") from None
    return found, offset


async def tracker_caught_up(amqp_url: str, settings: TrackerSettings, within: float = 60) -> None:
    """Return once the tracker has folded everything on the log so far and published what
    it derived: its checkpoint has passed a marker published now, and its outbox is empty."""
    _, offset = await _to_marker(amqp_url, "")

    def caught_up() -> bool:
        store = open_store(settings.db)
        try:
            checkpoint = store.checkpoint()
        finally:
            store.close()
        return checkpoint is not None and checkpoint >= offset

    await until(caught_up, within, f"the tracker {settings.tracker_id} past offset {offset}")
    await until(
        lambda: read_depth(settings.outbox_path) == 0,
        within,
        f"the tracker {settings.tracker_id}'s outbox to drain",
    )
