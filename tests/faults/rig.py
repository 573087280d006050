"""A whole dimsebus deployment as real processes, for breaking things on purpose.

The node, the tracker, the retrier and the audit service each run as
``python -m dimsebus.services ...`` in its own process group (so ``kill -9`` is real),
against a vhost of their own on the real broker, with dcmtk peers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aio_pika.abc import AbstractConnection
from aiormq.exceptions import ChannelNotFoundEntity

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.audit.chain import Verification, verify
from dimsebus.services.audit.store import AuditStore
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.log import LogReader
from dimsebus.services.bus.outbox import read_depth
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.errors import DimsebusError
from dimsebus.services.node.archive import Archive
from dimsebus.services.node.synthetic import ct_instance, synthetic_uid
from dimsebus.services.tracker.api import load_views
from dimsebus.services.tracker.app import TrackerSettings
from dimsebus.services.tracker.store import open_store
from tests.integration.conftest import log_marker
from tests.integration.peers import dcmtk, free_port, run_tool, wait_for_port

PYTHON = [sys.executable, "-m", "dimsebus.services"]
# A service's own config names its vhost: these variables would override it (settings.py).
OVERRIDES = ("AMQP_URL", "DIMSEBUS_AMQP_URL")
# What each downstream service logs once it consumes.
READY = {"tracker": "tracker reading dimsebus.log", "retrier": "consuming", "audit": "consuming"}


@dataclass
class Process:
    """One service process: started, killed with any signal, started again."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    since: int = 0  # where this run's output starts in ``log``

    def start(self) -> Process:
        """Start (again); output goes to ``log``."""
        self.since = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**service_environment(), **self.env},
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        """The process id of the running service."""
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def kill(self, group: bool = False) -> None:
        """``kill -9`` the service process; with ``group``, its children too (a power cut).

        Alone, its children (the relay) must notice that their parent died.
        """
        if group:
            os.killpg(self.pid, signal.SIGKILL)
        else:
            os.kill(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, as an operator stops it; SIGKILL for the whole group if it hangs."""
        self.terminate()
        self.reap()

    def terminate(self) -> None:
        """SIGTERM, without waiting for the service to end."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def reap(self) -> None:
        """Wait for a terminated service to end; SIGKILL for the whole group if it hangs."""
        if self.process is None:
            return
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def said(self, text: str) -> bool:
        """Whether this run of the service has logged ``text``."""
        if not self.log.exists():
            return False
        with self.log.open("rb") as out:
            out.seek(self.since)
            return text.encode() in out.read()

    def tail(self, lines: int = 40) -> str:
        """The end of its output, for a failing assertion's message."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Rig:
    """One deployment: a node with a study in its archive, and its downstream services."""

    root: Path
    amqp_url: str
    node_id: str
    port: int
    destinations: dict[str, int]
    node_settings: dict[str, Any] = field(default_factory=dict)
    peers: list[str] = field(
        default_factory=lambda: ["MOVESCU", *(f"MOVESCU{n:02d}" for n in range(1, 100))]
    )
    """The calling AE titles that may move from the node (movescu, the load's movers)."""
    policy: dict[str, float] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)
    study_uids: dict[str, list[str]] = field(default_factory=dict)
    settled_log: list[CloudEvent] = field(default_factory=list)
    """The log up to the marker that ``settled`` saw the tracker past (not read again)."""
    tracker_store: str | None = None
    """A postgresql:// URL the trackers share; None: the SQLite file ``tracker_db``."""
    retrier_store: str | None = None
    """A postgresql:// URL the retriers share; None: an SQLite file in ``root``."""

    # -- configuration ------------------------------------------------------------

    def write_configs(self) -> None:
        """TOML files for the four services, as an operator would write them."""
        lines = [
            f'node_id = "{self.node_id}"',
            f"port = {self.port}",
            'host = "127.0.0.1"',
            f'archive_path = "{self.root / "archive"}"',
            f'outbox_path = "{self.root / "node-outbox.sqlite"}"',
            f'amqp_url = "{self.amqp_url}"',
            *(f"{key} = {json.dumps(value)}" for key, value in self.node_settings.items()),
        ]
        for ae, port in self.destinations.items():
            lines += [f"\n[destinations.{ae}]", 'host = "127.0.0.1"', f"port = {port}"]
        for ae in self.peers:
            lines += [f"\n[peers.{ae}]", 'host = "127.0.0.1"', 'allow = ["echo", "move"]']
        (self.root / "node.toml").write_text("\n".join(lines) + "\n")
        (self.root / "tracker.toml").write_text(
            f'amqp_url = "{self.amqp_url}"\ndb = "{self.tracker_url}"\n'
            f'outbox_path = "{self.root / "tracker-outbox.sqlite"}"\n'
            "progress_interval = 2.0\nstall_after = 600.0\n"
        )
        policy = {  # retries within milliseconds: the scenarios wait on them, not on a clock
            "max_attempts": 6,
            "initial_delay": 0.05,
            "multiplier": 2.0,
            "max_delay": 0.5,
            "jitter": 0.1,
            **self.policy,
        }
        (self.root / "retrier.toml").write_text(
            f'amqp_url = "{self.amqp_url}"\n'
            f'db = "{self.retrier_store or self.root / "retrier.sqlite"}"\n\n[policy]\n'
            + "".join(f"{key} = {value}\n" for key, value in policy.items())
        )
        (self.root / "audit.toml").write_text(
            f'amqp_url = "{self.amqp_url}"\ndb = "{self.audit_db}"\n'
        )

    @property
    def tracker_db(self) -> Path:
        """The tracker's SQLite store."""
        return self.root / "tracker.sqlite"

    @property
    def tracker_url(self) -> str:
        """What the trackers' ``db`` is: ``tracker_store``, else the SQLite file."""
        return self.tracker_store or str(self.tracker_db)

    @property
    def audit_db(self) -> Path:
        """The audit trail's SQLite store."""
        return self.root / "audit.sqlite"

    @property
    def outbox(self) -> Path:
        """The node's outbox file."""
        return self.root / "node-outbox.sqlite"

    def add_study(self, instances: int, seed: str) -> str:
        """A synthetic study of ``instances`` CT images in the node's archive; its UID.

        Each image goes into the archive as made, not written to a file and read back
        (`dimsebus archive import`): for 10,000 that was minutes of the load scenario.
        """
        study_uid = synthetic_uid(seed, seed)
        series_uid = synthetic_uid(study_uid, "series-1")
        archive = Archive(self.root / "archive")
        try:
            stored = [
                archive.store(
                    ct_instance(
                        patient_id=seed, study_uid=study_uid, series_uid=series_uid, number=n
                    )
                )
                for n in range(1, instances + 1)
            ]
        finally:
            archive.close()
        self.study_uids[study_uid] = [s.sop_instance_uid for s in stored]
        return study_uid

    # -- processes ----------------------------------------------------------------

    def service(self, name: str, *argv: str) -> Process:
        """Start ``dimsebus <argv>`` as ``name``."""
        process = Process(name, [*PYTHON, *argv], self.root / f"{name}.log").start()
        self.processes[name] = process
        return process

    async def start_node(self) -> Process:
        """The node, once it listens."""
        node = self.service("node", "node", "--config", str(self.root / "node.toml"))
        await asyncio.to_thread(wait_for_port, self.port, 30)
        return node

    async def start_downstream(self, *names: str) -> None:
        """The tracker, the retrier and the audit service (or those named), once consuming."""
        started = [
            self.service(name, name, "--config", str(self.root / f"{name}.toml"))
            for name in names or ("tracker", "retrier", "audit")
        ]
        deadline = time.monotonic() + 60
        for process in started:
            while not process.said(READY[process.name]):
                if time.monotonic() > deadline or process.process.poll() is not None:  # type: ignore[union-attr]
                    raise AssertionError(f"{process.name} did not start:\n{process.tail()}")
                await asyncio.sleep(0.05)

    async def start(self) -> None:
        """The whole deployment, started at once (each start-up is a second or two of imports):
        return once the tracker, the retrier and the audit consume and the node listens."""
        await asyncio.gather(self.start_downstream(), self.start_node())

    async def consuming(self, *queues: str, within: float = 60) -> None:
        """Return once each of ``queues`` exists and has a consumer (the broker says so)."""
        deadline = time.monotonic() + within
        connection = await connect(self.amqp_url, "dimsebus-faults-probe")
        async with connection:
            for name in queues:
                while not await _has_consumer(connection, name):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no consumer on {name} within {within} s")
                    await asyncio.sleep(0.1)

    def stop_all(self) -> None:
        """SIGTERM every process started, all at once (each takes a while to shut down)."""
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.reap()

    # -- what happened ------------------------------------------------------------

    async def movescu(self, study_uid: str, destination: str, ae_title: str = "MOVESCU") -> str:
        """dcmtk's movescu asks the node to move ``study_uid`` to ``destination``."""
        return await run_tool(
            dcmtk("movescu"),
            "-S",
            "-aet",
            ae_title,
            "-aec",
            "DIMSEBUS",
            "-aem",
            destination,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "127.0.0.1",
            str(self.port),
            within=900,
        )

    async def log(self, within: float = 120) -> list[CloudEvent]:
        """Every event of this vhost's log, repeats included, once the node's outbox is empty:
        read up to a marker published after it (not until the log has been idle a while)."""
        events, _, _ = await self._log_to_marker(within)
        return events

    async def _log_to_marker(self, within: float) -> tuple[list[CloudEvent], CloudEvent, int]:
        """The log before a marker published once the node's outbox is empty; the marker
        and its offset."""
        await until_true(lambda: read_depth(self.outbox) == 0, within, "the node's outbox to drain")
        marker = log_marker()
        connection = await connect(self.amqp_url, "dimsebus-faults-marker")
        async with connection:
            await Publisher(await confirming_channel(connection)).publish(marker)
        found: list[CloudEvent] = []
        connection = await connect(self.amqp_url, "dimsebus-faults-reader")
        async with connection, LogReader(await connection.channel(), "first") as log:
            async with asyncio.timeout(within):
                async for entry in log:
                    if entry.event is not None and entry.event.id == marker.id:
                        return found, marker, entry.offset
                    if entry.event is not None:
                        found.append(entry.event)
        raise AssertionError(f"the log ended before the marker {marker.id}")

    async def caught_up(self, within: float = 120) -> None:
        """Return once the tracker (and the audit service, if started) has taken in everything
        on the log: the node's outbox is empty, and they are past a marker published after."""
        self.settled_log, marker, offset = await self._log_to_marker(within)

        def past() -> bool:
            store = open_store(self.tracker_url)
            try:
                tracked = (store.checkpoint() or -1) >= offset
            finally:
                store.close()
            if not tracked or "audit" not in self.processes:
                return tracked
            audit = AuditStore.open(str(self.audit_db))
            try:
                return any(r.event_id == str(marker.id) for r in audit.records())
            finally:
                audit.close()

        await until_true(past, within, f"the tracker and the audit past the marker {marker.id}")

    def audited(self) -> set[str]:
        """The ids of the events the audit trail holds (read in-process)."""
        audit = AuditStore.open(str(self.audit_db))
        try:
            return {r.event_id for r in audit.records()}
        finally:
            audit.close()

    def audit_chain(self) -> tuple[Verification, list[str]]:
        """The audit trail's chain walked (`dimsebus audit verify`), and its records' event
        ids in order, repeats included (read in-process)."""
        audit = AuditStore.open(str(self.audit_db))
        try:
            records = list(audit.records())
        finally:
            audit.close()
        return verify(records), [r.event_id for r in records]

    def rejected(self) -> list[str]:
        """Why the tracker skipped each log entry it did (`dimsebus moves rejected`, in-process)."""
        store = open_store(self.tracker_url)
        try:
            return [r.reason for r in store.rejected()]
        finally:
            store.close()

    def moves(self) -> list[dict[str, Any]]:
        """What `dimsebus moves list --json` prints for this rig's tracker (read in-process)."""
        views = load_views(TrackerSettings(db=self.tracker_url))
        found: list[dict[str, Any]] = json.loads(json.dumps(views))
        return found

    async def settled(
        self, outcomes: tuple[str, ...] = ("completed",), moves: int = 1, within: float = 180
    ) -> list[dict[str, Any]]:
        """The tracker's moves once ``moves`` of them have one of ``outcomes``, and still do
        once the tracker has taken in everything on the log (``caught_up``)."""
        deadline = time.monotonic() + within
        views: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            views = await asyncio.to_thread(self._moves_or_none)
            if len([v for v in views if v["outcome"] in outcomes]) >= moves:
                await self.caught_up(max(deadline - time.monotonic(), 1))
                views = await asyncio.to_thread(self._moves_or_none)
                if len([v for v in views if v["outcome"] in outcomes]) >= moves:
                    return views
            await asyncio.sleep(0.1)
        tracker = self.processes.get("tracker")
        raise AssertionError(
            f"moves did not settle on {outcomes}: "
            f"{[(v['outcome'], v['counts'], v['responses']) for v in views]}\n"
            f"{tracker.tail() if tracker else ''}"
        )

    def _moves_or_none(self) -> list[dict[str, Any]]:
        if self.tracker_store is None and not self.tracker_db.exists():
            return []
        try:
            return self.moves()
        except (DimsebusError, sqlite3.Error):
            return []  # the store is being created

    def outbox_depth(self) -> int:
        """Rows waiting in the node's outbox (read as `dimsebus node status` reads it)."""
        return read_depth(self.outbox)


def service_environment() -> dict[str, str]:
    """This process's environment less what would point a service away from its config."""
    return {name: value for name, value in os.environ.items() if name not in OVERRIDES}


async def _has_consumer(connection: AbstractConnection, queue: str) -> bool:
    """Whether ``queue`` exists and has a consumer (a passive declare; a fresh channel, for
    the broker closes the channel of a passive declare of a queue that does not exist)."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except ChannelNotFoundEntity:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()
    return bool(declared.declaration_result.consumer_count)


async def until_true(condition: Callable[[], bool], within: float, what: str) -> None:
    """Wait until ``condition()`` (run on a thread) holds; fail naming ``what`` was awaited."""
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within:.0f} s for {what}")
        await asyncio.sleep(0.1)


def new_rig(
    root: Path,
    amqp_url: str,
    destinations: dict[str, int],
    policy: dict[str, float] | None = None,
    **node: Any,
) -> Rig:
    """A rig in ``root`` whose node knows ``destinations`` (AE title -> port)."""
    root.mkdir(parents=True, exist_ok=True)
    rig = Rig(
        root=root,
        amqp_url=amqp_url,
        node_id=f"faults-{root.name[-24:]}".replace("_", "-"),
        port=free_port(),
        destinations=destinations,
        node_settings=node,
        policy=policy or {},
    )
    rig.write_configs()
    return rig


def storescp_answers(log: Path) -> list[str]:
    """The SOP instance UIDs of the C-STORE-RQs dcmtk's storescp (``-d``) received."""
    if not log.exists():
        return []
    marker = "Affected SOP Instance UID     : "
    answered: list[str] = []
    in_store = False
    for line in log.read_text(errors="replace").splitlines():
        if line.endswith("Message Type                  : C-STORE RQ"):
            in_store = True
        elif in_store and marker in line:
            answered.append(line.split(marker, 1)[1].strip())
            in_store = False
    return answered


def unsent_uids(log: list[CloudEvent], reason: str) -> set[str]:
    """UIDs the node reported unsent for ``reason``."""
    return {
        uid
        for e in log
        if isinstance(e, ev.CStoreUnsent) and e.data.reason == reason
        for uid in e.data.sop_instance_uids
    }


def tracked_responses(views: list[dict[str, Any]]) -> int:
    """Responses the tracker folded (valid or not), over all moves."""
    return sum(v["responses"]["received"] + v["responses"]["invalid"] for v in views)
