"""``dimsebus demo``: the whole product against embedded peers, with one command.

It finds a broker, makes a vhost of its own there (``dimsebus.services.vhosts``: two demos
never see each other's events), then runs in one process: a node whose archive holds a
generated study, a destination Storage SCP that refuses a share of the
C-STOREs with 0xA700 on their first attempt and aborts its first association
once, and the tracker, retrier and audit services. A C-MOVE (as AE DEMOSCU)
moves the study through the node; progress bars follow the tracker while the
retries complete the move, and so does the tracker's web page, whose address it
prints; a summary ends it (``serve_page`` keeps the page up afterwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from dimsebus.services.audit.app import AuditSettings, run_audit
from dimsebus.services.audit.chain import Verification, verify
from dimsebus.services.audit.store import AuditStore
from dimsebus.services.bus.brokers import parse_urls
from dimsebus.services.bus.connection import refusal
from dimsebus.services.errors import DimsebusError
from dimsebus.services.http import serving
from dimsebus.services.node.app import QUERY_RETRIEVE, Node
from dimsebus.services.node.archive import Archive
from dimsebus.services.node.config import Destination, NodeSettings, Peer
from dimsebus.services.node.synthetic import write_study
from dimsebus.services.retrier.app import RetrierSettings, run_retrier
from dimsebus.services.retrier.policy import RetryPolicy
from dimsebus.services.settings import ServiceSettings
from dimsebus.services.tracker import api
from dimsebus.services.tracker.api import load_views
from dimsebus.services.tracker.app import TrackerSettings, run_tracker
from dimsebus.services.tracker.progress import TERMINAL
from dimsebus.services.vhosts import own_vhost, vhost_of

STUDY_ROOT_MOVE = next(uid for uid in QUERY_RETRIEVE if uid.endswith("2.2"))
SETTLE_SECONDS = 8.0


class DemoError(DimsebusError):
    """The demo could not run: no broker, or a service that did not start."""


# -- a broker -------------------------------------------------------------------------------


async def find_broker(url: str, say: Callable[[str], None]) -> str:
    """``url`` if a broker answers there; else start one with Docker or rabbitmq-server."""
    if await _answers(url):
        return url
    await asyncio.to_thread(_start_broker, url, say)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if await _answers(url):
            return url
        await asyncio.sleep(1)
    raise DemoError(f"started RabbitMQ, but nothing answers at {_masked(url)} after 90 s")


def _start_broker(url: str, say: Callable[[str], None]) -> None:
    if _docker_answers() and Path("docker-compose.yml").exists():
        say("no broker answers; starting RabbitMQ with `docker compose up -d rabbitmq`")
        subprocess.run(["docker", "compose", "up", "-d", "rabbitmq"], check=True)
    elif shutil.which("rabbitmq-server"):
        say("no broker answers; starting the local `rabbitmq-server -detached`")
        subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True)
    else:
        raise DemoError(
            f"no RabbitMQ answers at {_masked(url)}, and neither Docker nor rabbitmq-server "
            "is here: install one (apt-get install -y rabbitmq-server, or Docker and "
            "`docker compose up -d rabbitmq`), or point AMQP_URL at a broker"
        )


async def _answers(url: str) -> bool:
    """Whether a broker answers; one that refuses the URL (user, vhost) is a ``DemoError``."""
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), 5)
    except Exception as exc:
        refused = refusal(exc)
        if refused is not None:  # a broker answers: starting another would not help
            raise DemoError(f"{_masked(url)}: {refused}") from exc
        return False
    await connection.close()
    return True


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def _masked(url: str) -> str:
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':')[0]}:***@{host}" if at else url


# -- the destination that misbehaves --------------------------------------------------------


@dataclass
class FlakyDestination:
    """A Storage SCP that refuses ``share`` of first attempts with 0xA700 and aborts once."""

    share: float = 0.1
    abort_after: int = 40
    received: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    aborted: bool = False
    _seen: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            first_time = uid not in self._seen
            self._seen.add(uid)
            if first_time and not self.aborted and len(self._seen) > self.abort_after:
                self.aborted = True
                event.assoc.abort()
                return 0xA700
            if first_time and _share(uid) < self.share:
                self.refused.add(uid)
                return 0xA700
            self.received.add(uid)
        return 0x0000

    @contextlib.contextmanager
    def serving(self, port: int) -> Iterator[None]:
        ae = AE(ae_title="DEMODEST")
        ae.supported_contexts = AllStoragePresentationContexts
        server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )
        try:
            yield
        finally:
            assert server is not None
            server.shutdown()


def _share(uid: str) -> float:
    return int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


# -- the run --------------------------------------------------------------------------------


@dataclass
class DemoSummary:
    """What the demo did, for its closing table."""

    move_id: str
    instances: int
    outcome: str
    counts: dict[str, Any]
    first_attempt_failures: int
    refused: int
    aborted: bool
    retried: int
    most_attempts: int
    destination_received: int
    audit: Verification
    seconds: float
    tracker_db: Path
    audit_db: Path
    page_url: str
    tracker_port: int
    failed_instances: list[dict[str, Any]] = field(default_factory=list)
    vhost: str = "/"
    """The broker vhost the demo ran in (its own, unless none could be made)."""


async def run_demo(
    settings: ServiceSettings,
    workdir: Path,
    instances: int,
    progress: Progress | None,
    say: Callable[[str], None],
    within: float = 300.0,
) -> DemoSummary:
    """Run every service, move the study, follow the move to its end; the summary."""
    first = parse_urls(settings.amqp_url)[0]  # of a cluster's URLs, the demo uses the first
    url = await own_vhost(await find_broker(first, say), dt.datetime.now(dt.UTC), say)
    started = time.monotonic()
    node_settings, study_uid = await asyncio.to_thread(_prepare_node, workdir, url, instances, say)
    destination = FlakyDestination(abort_after=max(5, instances // 3))
    page_port = _free_port()
    tracker = TrackerSettings(
        amqp_url=url,
        db=str(workdir / "tracker.sqlite"),
        outbox_path=workdir / "tracker-outbox.sqlite",
        tracker_id="demo-tracker",
        start_from="next",
        retries=True,  # the demo runs a retrier: a failure is final once it decided
        http_host="127.0.0.1",
        http_port=page_port,
    )
    retrier = RetrierSettings(
        amqp_url=url,
        db=workdir / "retrier.sqlite",
        retrier_id="demo-retrier",
        policy=RetryPolicy(max_attempts=5, initial_delay=2.0, multiplier=1.5, jitter=0.1),
    )
    audit = AuditSettings(amqp_url=url, db=str(workdir / "audit.sqlite"), audit_source="demo")
    with destination.serving(node_settings.destinations["DEMODEST"].port):
        async with _services(node_settings, tracker, retrier, audit):
            say(f"moving study {study_uid} ({instances} instances) from DIMSEBUS to DEMODEST")
            say(f"the moves page, live while the move runs: {_page_url(page_port)}")
            move = asyncio.create_task(asyncio.to_thread(_c_move, node_settings, study_uid))
            view = await _follow(tracker, progress, instances, within)
            await move
    chain = await asyncio.to_thread(_verify, audit.db)
    retried = view["retried_instances"]
    return DemoSummary(
        move_id=view["move_id"],
        instances=instances,
        outcome=view["outcome"],
        counts=view["counts"],
        first_attempt_failures=len(retried)
        + sum(f["attempts"] == 1 for f in view["failed_instances"]),
        refused=len(destination.refused),
        aborted=destination.aborted,
        retried=len(retried),
        most_attempts=max((r["attempts"] for r in retried), default=1),
        destination_received=len(destination.received),
        audit=chain,
        seconds=time.monotonic() - started,
        tracker_db=Path(tracker.db),
        audit_db=Path(audit.db),
        page_url=_page_url(page_port),
        tracker_port=page_port,
        failed_instances=view["failed_instances"],
        vhost=vhost_of(url),
    )


def _page_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


async def serve_page(summary: DemoSummary, say: Callable[[str], None], stop: asyncio.Event) -> None:
    """Serve the tracker's page (and API) over the demo's store, as it ended, until ``stop``
    is set (``console.run_service``: Ctrl-C or SIGTERM).

    The services have stopped, so the page has no live feed: it is the moves as they stand.
    """
    settings = TrackerSettings(
        db=str(summary.tracker_db), http_host="127.0.0.1", http_port=summary.tracker_port
    )
    async with serving(settings, [], lambda: {"ok": True}, api.routes(settings)):
        say(f"serving the moves page at {summary.page_url} until Ctrl-C")
        await stop.wait()


def _verify(db: str) -> Verification:
    store = AuditStore.open(db)
    try:
        return verify(store.records())
    finally:
        store.close()


def _prepare_node(
    workdir: Path, url: str, instances: int, say: Callable[[str], None]
) -> tuple[NodeSettings, str]:
    """The node's settings, with a generated study of ``instances`` in its archive."""
    workdir.mkdir(parents=True, exist_ok=True)
    settings = node_for_demo(workdir, url, _free_port(), _free_port())
    say(f"writing a synthetic study of {instances} CT instances into {settings.archive_path}")
    study_uid = archive_study(settings.archive_path, workdir / "study", instances, workdir.name)
    return settings, study_uid


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def _services(
    node: NodeSettings, tracker: TrackerSettings, retrier: RetrierSettings, audit: AuditSettings
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    readies = [asyncio.Event() for _ in range(4)]
    tasks = [
        asyncio.create_task(run_tracker(tracker, stop, readies[0])),
        asyncio.create_task(run_retrier(retrier, stop, readies[1])),
        asyncio.create_task(run_audit(audit, stop, readies[2])),
        asyncio.create_task(Node.open(node).serve(stop, readies[3])),
    ]
    try:
        all_ready = asyncio.create_task(
            asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), 60)
        )
        done, _ = await asyncio.wait([all_ready, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if all_ready not in done:
            all_ready.cancel()
            ended = next(task for task in tasks if task in done)
            raise DemoError(f"a service stopped while starting: {ended.exception()!r}")
        try:
            all_ready.result()
        except TimeoutError as exc:
            raise DemoError("the services did not start within 60 s") from exc
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


def _c_move(settings: NodeSettings, study_uid: str) -> int:
    """C-MOVE the study to DEMODEST as AE DEMOSCU; the final status."""
    status: int = 0xC000
    ae = AE(ae_title="DEMOSCU")
    ae.add_requested_context(STUDY_ROOT_MOVE)
    assoc = ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
    if not assoc.is_established:
        raise DemoError(f"the node did not accept an association on port {settings.port}")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    try:
        for response, _ in assoc.send_c_move(query, "DEMODEST", STUDY_ROOT_MOVE):
            if response and "Status" in response:
                status = int(response.Status)
    finally:
        assoc.release()
    return status


async def _follow(
    tracker: TrackerSettings, progress: Progress | None, expected: int, within: float
) -> dict[str, Any]:
    """Poll the tracker's store until the move finishes; bars show it meanwhile."""
    task = progress.add_task("sub-operations done", total=expected, state="") if progress else None
    deadline = time.monotonic() + within
    view: dict[str, Any] | None = None
    ended_since: float | None = None
    while time.monotonic() < deadline:
        view = await asyncio.to_thread(_latest_move, tracker)
        if view is not None:
            counts = view["counts"]
            done = counts["completed"] + counts["warning"]
            if progress is not None and task is not None:
                state = f"{view['outcome']}, {counts['failed']} failed for now"
                progress.update(
                    task, completed=done, total=view["expected"] or expected, state=state
                )
            # Failures are final only once the retrier has had its say: until its decisions
            # reach the tracker, a move with failures looks finished for a moment.
            if view["outcome"] == "completed":
                return view
            if view["outcome"] in TERMINAL:
                ended_since = ended_since or time.monotonic()
                if time.monotonic() - ended_since >= SETTLE_SECONDS:
                    return view
            else:
                ended_since = None
        await asyncio.sleep(0.3)
    raise DemoError(f"the move did not finish within {within:.0f} s (last seen: {view})")


def _latest_move(tracker: TrackerSettings) -> dict[str, Any] | None:
    views = load_views(tracker)
    return views[-1] if views else None


def progress_bars(console: Console) -> Progress:
    """The demo's live bars."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        console=console,
    )


def archive_study(archive_path: Path, folder: Path, instances: int, seed: str) -> str:
    """Write a synthetic study and import it into the archive; its Study Instance UID."""
    archive = Archive(archive_path)
    try:
        stored = [archive.import_file(p) for p in write_study(folder, instances, seed=seed)]
    finally:
        archive.close()
    return str(stored[0].study_instance_uid)


def node_for_demo(workdir: Path, url: str, node_port: int, destination_port: int) -> NodeSettings:
    """The demo node: its archive and outbox under ``workdir``, DEMODEST as its destination."""
    return NodeSettings(
        amqp_url=url,
        node_id="demo-node",
        ae_title="DIMSEBUS",
        host="127.0.0.1",
        port=node_port,
        archive_path=workdir / "archive",
        outbox_path=workdir / "node-outbox.sqlite",
        destinations={"DEMODEST": Destination(host="127.0.0.1", port=destination_port)},
        peers={"DEMOSCU": Peer(host="127.0.0.1", allow=frozenset({"echo", "move"}))},
        dimse_timeout=10.0,
    )
