"""Two copies of each service on one PostgreSQL database (issue 22, item 4).

Trackers and audit services run active/standby: real ``dimsebus tracker`` / ``audit``
processes, ``kill -9`` and a dropped lock connection. Retriers compete: two of them
handling the same failures at once publish each decision once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.audit.chain import verify
from dimsebus.services.audit.store import AuditStore
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.leadership import Leadership
from dimsebus.services.retrier.app import Retrier, RetrierSettings
from dimsebus.services.retrier.policy import RetryPolicy
from dimsebus.services.retrier.store import RetryStore
from dimsebus.services.sql import Fenced
from dimsebus.services.tracker.store import open_store
from tests.broker import Broker, private_vhost
from tests.faults.rig import Process
from tests.integration.conftest import log_marker
from tests.integration.peers import free_port
from tests.unit.test_retrier_handle import MemoryOutlet
from tests.unit.test_retry_policy import T0, received

TAKEOVER = 10.0  # seconds the standby may take to be active once the active one is killed


@pytest.fixture
def vhost(broker: Broker) -> Iterator[str]:
    """A vhost of this test's own: its log and queues hold only its events."""
    with private_vhost(broker.url, broker.ctl) as url:
        yield url


def health(port: int) -> dict[str, Any]:
    """A service's /healthz answer (200 or 503 alike)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            found: dict[str, Any] = json.load(answer)
    except urllib.error.HTTPError as refused:
        found = json.load(refused)
    return found


def fetch(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` of a service's HTTP side: status and body."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.status, answer.read().decode()


async def until(check: Any, within: float = 60, what: str = "") -> float:
    """Wait until ``check()`` (on a thread) holds; the seconds it took."""
    start = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - start > within:
            raise AssertionError(f"waited {within:.0f} s for {what or check}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


class Copy:
    """One copy of a service: its process, config and HTTP port."""

    def __init__(self, root: Path, service: str, name: str, settings: dict[str, Any]) -> None:
        self.port = free_port()
        config = root / f"{name}.toml"
        lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        config.write_text("\n".join([*lines, f"http_port = {self.port}", ""]))
        argv = [sys.executable, "-m", "dimsebus.services", service, "--config", str(config)]
        self.service = service
        self.process = Process(name, argv, root / f"{name}.log")

    def start(self) -> Copy:
        """Start the process."""
        self.process.start()
        return self

    def role(self) -> str | None:
        """What /healthz says this copy is (None while it does not answer yet)."""
        try:
            return str(health(self.port).get("role"))
        except OSError:
            return None

    async def becomes(self, role: str, within: float = 60) -> float:
        """Wait until /healthz says ``role`` (and, standing by, once it tried for the lock);
        the seconds it took."""
        tried = f"{self.service} is {role}"
        return await until(
            lambda: self.role() == role and (role == "active" or self.process.said(tried)),
            within,
            f"{self.process.name} to be {role}:\n{self.process.tail()}",
        )


async def publish(url: str, events: list[CloudEvent]) -> None:
    """Publish events to the vhost's log, confirmed."""
    connection = await connect(url, "dimsebus-tests-redundancy")
    async with connection:
        await Publisher(await confirming_channel(connection)).publish_all(events)


def tracker_copy(root: Path, name: str, db: str, amqp_url: str) -> Copy:
    """A tracker on the shared ``db`` with an outbox of its own."""
    settings = {
        "amqp_url": amqp_url,
        "db": db,
        "tracker_id": name,
        "outbox_path": str(root / f"{name}-outbox.sqlite"),
    }
    return Copy(root, "tracker", name, settings)


def either_said(first: Copy, second: Copy, text: str) -> bool:
    """Whether either copy has said ``text``."""
    return first.process.said(text) or second.process.said(text)


def checkpoint(db: str) -> int:
    """The shared tracker store's committed log offset (-1 before the first)."""
    store = open_store(db)
    try:
        found = store.checkpoint()
    finally:
        store.close()
    return -1 if found is None else found


def lock_holder(db: str, name: str) -> int | None:
    """The PostgreSQL backend that holds ``name``'s lock for the schema of ``db``."""
    with psycopg.connect(db, autocommit=True) as conn:
        key = conn.execute(
            "SELECT hashtextextended('dimsebus.leader.' || %s || '.' || current_schema(), 0)",
            (name,),
        ).fetchone()
        assert key is not None
        unsigned = int(key[0]) & (2**64 - 1)
        row = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
            (unsigned >> 32, unsigned & 0xFFFFFFFF),
        ).fetchone()
    return None if row is None else int(row[0])


async def test_trackers_take_turns_after_kill_9_and_a_dropped_lock_connection(
    tmp_path: Path, vhost: str, postgres_url: str
) -> None:
    # given two trackers on one PostgreSQL database: the first to start is active
    first = tracker_copy(tmp_path, "t1", postgres_url, vhost).start()
    await first.becomes("active")
    second = tracker_copy(tmp_path, "t2", postgres_url, vhost).start()
    try:
        await second.becomes("standby")
        # and the standby answers the API's reads from the shared database, and /metrics
        assert fetch(second.port, "/moves")[0] == 200
        assert "dimsebus_tracker_active 0.0" in fetch(second.port, "/metrics")[1]
        assert "dimsebus_tracker_active 1.0" in fetch(first.port, "/metrics")[1]
        # when the active one has committed the log up to a marker, then is killed
        await publish(vhost, [log_marker(), log_marker()])
        await until(lambda: checkpoint(postgres_url) >= 1, what="the first checkpoint")
        committed = checkpoint(postgres_url)
        await asyncio.to_thread(first.process.kill)
        took = await second.becomes("active", TAKEOVER)
        # then the standby is active within 10 s, and reads on from the committed checkpoint
        reading = f"tracker reading dimsebus.log from {committed + 1}"
        took += await until(lambda: second.process.said(reading), TAKEOVER - took, reading)
        await publish(vhost, [log_marker()])
        await until(lambda: checkpoint(postgres_url) >= committed + 1, what="the next one")
        print(f"takeover after kill -9: {took:.2f} s")
        # and a tracker started again stands by
        first.start()
        await first.becomes("standby")
        # when the active one's lock connection is cut (as a network fault would)
        holder = lock_holder(postgres_url, "tracker")
        assert holder is not None
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (holder,))
        # then it stands by within its check interval; one of the two takes the next term
        lost = "tracker is standby: lost the lock's connection"
        stood_by = await until(lambda: second.process.said(lost), 5, lost)
        took = await until(lambda: either_said(first, second, "took the lock, term 3"), TAKEOVER)
        await until(lambda: {first.role(), second.role()} == {"active", "standby"})
        # and the active one moves the checkpoint on
        before = checkpoint(postgres_url)
        await publish(vhost, [log_marker()])
        await until(lambda: checkpoint(postgres_url) > before, what="the checkpoint")
        print(f"stood by {stood_by:.2f} s after its lock connection was cut, term 3 {took:.2f} s")
    finally:
        first.process.stop()
        second.process.stop()


def audit_copy(root: Path, name: str, db: str, amqp_url: str) -> Copy:
    """An audit service on the shared ``db``."""
    return Copy(root, "audit", name, {"amqp_url": amqp_url, "db": db})


def audited(db: str) -> list[str]:
    """The event ids of the shared trail, in chain order; the chain must verify."""
    store = AuditStore.open(db)
    try:
        records = list(store.records())
    finally:
        store.close()
    assert verify(records).ok
    return [r.event_id for r in records]


async def test_one_audit_service_writes_the_chain_and_a_standby_takes_over(
    tmp_path: Path, vhost: str, postgres_url: str
) -> None:
    # given two audit services on one PostgreSQL database
    first = audit_copy(tmp_path, "a1", postgres_url, vhost).start()
    await first.becomes("active")
    second = audit_copy(tmp_path, "a2", postgres_url, vhost).start()
    try:
        await second.becomes("standby")
        assert "dimsebus_audit_active 0.0" in fetch(second.port, "/metrics")[1]
        before = [log_marker() for _ in range(5)]
        await publish(vhost, before)
        await until(lambda: len(audited(postgres_url)) >= 5, what="5 records")
        # when the active one is killed and more events come
        await asyncio.to_thread(first.process.kill)
        await second.becomes("active", TAKEOVER)
        after = [log_marker() for _ in range(5)]
        await publish(vhost, after)
        # then the chain holds every event once, and verifies
        await until(lambda: len(audited(postgres_url)) >= 10, what="10 records")
        recorded = audited(postgres_url)
        assert sorted(recorded) == sorted(str(e.id) for e in before + after)
    finally:
        first.process.stop()
        second.process.stop()


class SlowOutlet(MemoryOutlet):
    """The broker's outlet, taking a while to confirm: two retriers could both be in it."""

    async def announce(self, event: ev.RetryScheduled | ev.RetryExhausted, node_id: str) -> None:
        await asyncio.sleep(0.02)
        await super().announce(event, node_id)


@pytest.fixture(params=["postgresql", "sqlite"])
def retrier_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One retrier store: a PostgreSQL schema, or an SQLite file that two processes share."""
    if request.param == "sqlite":
        return str(tmp_path / "retrier.sqlite")
    return str(request.getfixturevalue("postgres_url"))


async def test_two_retriers_on_one_store_publish_each_decision_once(retrier_db: str) -> None:
    # given two retriers, each with a connection of its own to one store
    policy = RetryPolicy(max_attempts=3, initial_delay=10, multiplier=2, max_delay=60, jitter=0.0)
    outlet = SlowOutlet()
    stores = [RetryStore(retrier_db), RetryStore(retrier_db)]
    retriers = [
        Retrier(
            RetrierSettings(retrier_id="r", policy=policy, db=retrier_db),
            store,
            outlet,
            clock=lambda: T0 + dt.timedelta(seconds=1),
        )
        for store in stores
    ]
    failures = [received(0xA700), received(0xA700, attempt=2)]
    try:
        # when both handle every failure at the same time, three times over (redeliveries)
        await asyncio.gather(*(r.handle(f) for f in failures for r in retriers for _ in range(3)))
    finally:
        for store in stores:
            store.close()
    # then each decision was announced and scheduled once
    decided = {event.id for event, _ in outlet.announced}
    assert len(outlet.announced) == len(decided)
    commands = [command.id for command, _, _ in outlet.scheduled]
    assert len(commands) == len(set(commands)) == len(decided)
    assert len(decided) == 2


async def test_a_tracker_whose_term_is_over_cannot_commit(postgres_url: str) -> None:
    # given a tracker store fenced by its term of office
    first, second = (
        Leadership(postgres_url, "tracker", "t1"),
        Leadership(postgres_url, "tracker", "t2"),
    )
    store = open_store(postgres_url)  # migrates: the terms' table is there
    never = asyncio.Event()
    try:
        assert await first.acquire(never)
        store.fenced(first.fence())
        store.save([], 1)
        # when its lock's connection is gone and another copy takes the next term
        holder = lock_holder(postgres_url, "tracker")
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (holder,))
        assert await asyncio.wait_for(second.acquire(never), 10)
        # then the first one's next commit is refused, and its checkpoint stays
        with pytest.raises(Fenced, match="term 1 is over"):
            store.save([], 2)
        assert store.checkpoint() == 1
    finally:
        store.close()
        await first.release()
        await second.release()
