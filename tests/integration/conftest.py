"""Fixtures for node tests: a running node with a synthetic archive, and reading its events."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiormq.exceptions import AMQPError

from schemas.envelope import CloudEvent
from services.bus.connection import connect
from services.bus.log import LogReader
from services.node.app import Node
from services.node.archive import Archive
from services.node.config import Destination, NodeSettings, Peer
from services.node.synthetic import write_study
from services.tracker.app import TrackerSettings, run_tracker
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
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 30)


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

    async def stop_all(self) -> None:
        """Stop every service started, and wait for each to end."""
        for stop, task in self._running:
            stop.set()
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
                    await asyncio.sleep(1)
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


async def until(condition: Callable[[], bool], within: float = 60.0) -> None:
    """Wait until ``condition()`` holds (polled every 20 ms), or fail after ``within`` s."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling what a test watches
            await asyncio.sleep(0.02)


def of_type(events: list[CloudEvent], event_type: str) -> list[CloudEvent]:
    """The events of one type."""
    return [event for event in events if event.type == event_type]


def moves_of(db: str, node: RunningNode) -> list[dict[str, Any]]:
    """What `dimsebus moves list --json` prints, for this node's moves."""
    result = subprocess.run(
        [sys.executable, "-m", "services", "moves", "list", "--json", "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [m for m in json.loads(result.stdout) if m["node_id"] == node.settings.node_id]


async def settled(db: str, node: RunningNode, outcome: str, within: float = 60) -> dict[str, Any]:
    """The node's one move once the tracker reports ``outcome`` for it."""
    async with asyncio.timeout(within):
        while True:
            moves = await asyncio.to_thread(moves_of, db, node)
            if moves and moves[0]["outcome"] == outcome:
                return moves[0]
            await asyncio.sleep(0.5)
