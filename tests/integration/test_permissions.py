"""Least-privilege broker users (scripts/rabbitmq-users) against the real RabbitMQ.

The users are made in a vhost of their own, with a prefix of their own (users are
global to the broker), and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused
from pydantic import SecretStr

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story
from dimsebus.services.audit.app import AuditSettings, run_audit
from dimsebus.services.audit.store import AuditStore
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.consumer import REASON_HEADER
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.topology import (
    COMMANDS_EXCHANGE,
    EVENTS_EXCHANGE,
    LOG_STREAM,
    WorkQueue,
    declare_work_queue,
    ensure_topology,
    node_commands,
)
from dimsebus.services.clock import new_id, utc_now
from dimsebus.services.errors import TopologyError
from dimsebus.services.node.app import Node
from dimsebus.services.node.config import NodeSettings
from dimsebus.services.retrier.app import RetrierSettings, run_retrier
from dimsebus.services.tracker.app import TrackerSettings, run_tracker
from tests.broker import Broker, local_rabbitmqctl
from tests.integration.conftest import Services, read_events
from tests.integration.peers import free_port, wait_for_port
from tests.integration.test_web_actions import TOKEN, Person
from tests.integration.users import ROLES, Users, script_users

pytestmark = pytest.mark.integration
RELEASED = "dicom.association.released"


@pytest.fixture(scope="module")
def users(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Users]:
    """The script's users in a fresh vhost whose topology dimsebus-admin declared."""
    with script_users(broker, tmp_path_factory.mktemp("users")) as made:
        yield made


def test_the_script_can_run_again_and_changes_nothing(users: Users) -> None:
    # given the users the script made, and their passwords
    before = users.secrets.read_text()
    ctl = local_rabbitmqctl()
    assert ctl is not None
    listed = ["rabbitmqctl", "list_permissions", "-q", "-p", users.vhost]
    permissions = ctl(listed)
    # when it runs again
    report = users.script()
    # then it generates no password, and every permission is as it was
    assert "none generated" in report
    assert users.secrets.read_text() == before
    assert sorted(ctl(listed).splitlines()) == sorted(permissions.splitlines())
    assert (users.secrets.stat().st_mode & 0o777) == 0o600


PUBLISHES = (
    (EVENTS_EXCHANGE, "dicom.cstore.response.received.success"),
    (EVENTS_EXCHANGE, "dimsebus.move.finished"),
    (EVENTS_EXCHANGE, "dimsebus.retry.scheduled"),
    (COMMANDS_EXCHANGE, "dimsebus.command.resend.n1"),
    (COMMANDS_EXCHANGE, "dimsebus.command.move.n1"),
    (EVENTS_EXCHANGE, "dimsebus.action.requested.retry"),
)
MAY_PUBLISH = {
    "admin": set(PUBLISHES),
    "node": {PUBLISHES[0]},
    # its derived events; its web page's actions, and a retry there (ui_actions)
    "tracker": {PUBLISHES[1], PUBLISHES[2], PUBLISHES[3], PUBLISHES[5]},
    "retrier": {PUBLISHES[2], PUBLISHES[3]},
    "audit": set(),
    "operator": {PUBLISHES[2], PUBLISHES[3], PUBLISHES[4]},  # resends, their scheduled; moves
}


@pytest.mark.parametrize("role", ROLES)
async def test_each_user_publishes_only_under_its_own_routing_keys(users: Users, role: str) -> None:
    # given a connection as the role's user
    allowed: set[tuple[str, str]] = set()
    async with await connect(users.url(role), f"dimsebus-test-{role}") as connection:
        # when it publishes under each routing key (a refusal closes the channel)
        for exchange, key in PUBLISHES:
            channel = await confirming_channel(connection)
            target = await channel.get_exchange(exchange, ensure=False)
            with contextlib.suppress(ChannelAccessRefused):
                await target.publish(aio_pika.Message(b"{}"), key, mandatory=False)
                allowed.add((exchange, key))
    # then only its own keys are accepted
    assert allowed == MAY_PUBLISH[role]


Action = Callable[[AbstractChannel], Awaitable[object]]


def declare(queue: WorkQueue) -> Action:
    return lambda channel: declare_work_queue(channel, queue)


def delete_queue(name: str) -> Action:
    return lambda channel: channel.queue_delete(name)


def delete_exchange(name: str) -> Action:
    return lambda channel: channel.exchange_delete(name)


async def ack(message: AbstractIncomingMessage) -> None:
    await message.ack()


def consume(name: str) -> Action:
    async def start(channel: AbstractChannel) -> object:
        queue = await channel.get_queue(name, ensure=False)
        return await queue.consume(ack)

    return start


async def purge(channel: AbstractChannel) -> object:
    queue = await channel.get_queue("dimsebus.node.n1", ensure=False)
    return await queue.purge()


QUEUES: list[tuple[str, str, Action, bool]] = [
    ("audit", "declare its queue", declare(WorkQueue("dimsebus.audit")), True),
    ("audit", "declare the retrier's", declare(WorkQueue("dimsebus.retrier")), False),
    ("audit", "consume a node's commands", consume("dimsebus.node.n1"), False),
    ("audit", "purge a node's commands", purge, False),
    ("audit", "delete the log", delete_queue(LOG_STREAM), False),
    ("audit", "delete the events exchange", delete_exchange(EVENTS_EXCHANGE), False),
    ("retrier", "declare a node's queue", declare(node_commands("n1")), True),
    ("retrier", "declare the audit's", declare(WorkQueue("dimsebus.audit")), False),
    ("retrier", "delete the commands exchange", delete_exchange(COMMANDS_EXCHANGE), False),
    ("node", "declare its command queue", declare(node_commands("n1")), True),
    ("node", "consume its commands", consume("dimsebus.node.n1"), True),
    ("node", "declare the audit's", declare(WorkQueue("dimsebus.audit")), False),
    ("node", "consume the retrier's queue", consume("dimsebus.retrier"), False),
    ("tracker", "declare a queue", declare(WorkQueue("dimsebus.tracker")), False),
    ("tracker", "declare a node's queue (a retry)", declare(node_commands("n1")), True),
    ("tracker", "delete the audit's queue", delete_queue("dimsebus.audit"), False),
]


@pytest.mark.parametrize(
    ("role", "what", "action", "allowed"), QUEUES, ids=[f"{r}: {w}" for r, w, *_ in QUEUES]
)
async def test_a_service_manages_its_own_queues_and_no_other(
    users: Users, role: str, what: str, action: Action, allowed: bool
) -> None:
    async with await connect(users.url(role), f"dimsebus-test-{role}") as connection:
        channel = await connection.channel()
        if allowed:
            await action(channel)
        else:
            with pytest.raises(ChannelAccessRefused, match="refused for user"):
                await action(channel)


@pytest.mark.parametrize("role", ROLES[1:])
async def test_a_service_checks_the_topology_it_may_not_declare(users: Users, role: str) -> None:
    async with await connect(users.url(role), f"dimsebus-test-{role}") as connection:
        assert await ensure_topology(connection) is False


async def test_without_the_topology_a_service_names_who_must_declare_it(users: Users) -> None:
    # given a vhost where the tracker's user has its permissions but nothing is declared
    ctl = local_rabbitmqctl()
    assert ctl is not None
    empty = users.vhost + "-empty"
    ctl(["rabbitmqctl", "add_vhost", empty])
    try:
        user = f"{users.prefix}tracker"
        ctl(["rabbitmqctl", "set_permissions", "-p", empty, user, "^$", "^$", "^dimsebus\\.log$"])
        url = users.url("tracker").rsplit("/", 1)[0] + "/" + quote(empty, safe="")
        async with await connect(url, "dimsebus-test-tracker") as connection:
            # then starting says what is missing and who declares it
            with pytest.raises(TopologyError, match="dimsebus topology declare"):
                await ensure_topology(connection)
    finally:
        ctl(["rabbitmqctl", "delete_vhost", empty])


async def echo(port: int) -> None:
    """A C-ECHO to the node at ``port``, as a peer it does not know (echo is all it may do)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    def run() -> None:
        ae = AE(ae_title="PERMTEST")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="DIMSEBUS")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()

    await asyncio.to_thread(run)


async def web_retry(port: int, move_id: str) -> None:
    """Sign in on the tracker's page once it shows the move, and press its Retry."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as client:
        person = Person(client, port)
        async with asyncio.timeout(60):
            while True:
                async with client.get(f"{person.base}/moves/{move_id}") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.1)  # polling the page: the tracker folds the move
        assert (await person.sign_in()).status == 303
        done = await person.post(f"/moves/{move_id}/retry", {"csrf": await person.csrf(move_id)})
        assert done.status == 303, done.status


def found(event_type: str) -> Callable[[list[CloudEvent]], bool]:
    return lambda events: any(e.type == event_type for e in events)


async def test_every_service_does_its_work_as_its_own_user(
    users: Users, services: Services, tmp_path: Path
) -> None:
    # given the tracker (its web page's actions on), the retrier and the audit service,
    # each as its own user
    tracker_port = free_port()
    await services.start(
        run_tracker,
        TrackerSettings(
            amqp_url=users.url("tracker"),
            db=str(tmp_path / "tracker.sqlite"),
            outbox_path=tmp_path / "tracker-outbox.sqlite",
            tracker_id="perm-tracker",
            http_port=tracker_port,
            ui_actions=True,
            ui_token=SecretStr(TOKEN),
        ),
    )
    await services.start(
        run_retrier,
        RetrierSettings(
            amqp_url=users.url("retrier"), db=tmp_path / "retrier.sqlite", retrier_id="perm-r"
        ),
    )
    audit = AuditSettings(amqp_url=users.url("audit"), db=str(tmp_path / "audit.sqlite"))
    await services.start(run_audit, audit)
    # and a node as the node's user, which a peer echoes
    node = NodeSettings(
        node_id="perm-node",
        amqp_url=users.url("node"),
        port=free_port(),
        host="127.0.0.1",
        archive_path=tmp_path / "archive",
        outbox_path=tmp_path / "outbox.sqlite",
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(Node.open(node).serve(stop, ready))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        await asyncio.to_thread(wait_for_port, node.port)
        await echo(node.port)
        # when the node's user publishes a move, and a tracker's event under a node's key
        story = move_story(node_id="perm-story", start=utc_now(), ids=iter(new_id, None))
        move = [e for e in story if e.type.startswith("dicom.")]
        forgery = next(e for e in story if isinstance(e, ev.MoveFinished))
        async with await connect(users.url("node"), "dimsebus-test-node") as connection:
            channel = await confirming_channel(connection)
            await Publisher(channel).publish_all(move)
            exchange = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
            body = forgery.model_dump_json().encode()
            await exchange.publish(aio_pika.Message(body), "dicom.move.completed")
        # then the node's relay published its association's events
        admin = users.url("admin")
        released = await read_events(admin, "dimsebus://node/perm-node", found(RELEASED))
        assert found(RELEASED)(released)
        # and the tracker derived the move's progress, the retrier decided about its failures
        tracked = await read_events(admin, "dimsebus://tracker/perm-tracker", bool)
        assert {e.type for e in tracked} <= {"dimsebus.move.progressed", "dimsebus.move.finished"}
        decided = await read_events(admin, "dimsebus://retrier/perm-r", bool)
        assert decided[0].type.startswith("dimsebus.retry."), decided
        # and the audit service parked the forgery, naming why
        async with await connect(admin, "dimsebus-test-admin") as connection:
            channel = await connection.channel()
            parked = await channel.get_queue("dimsebus.audit.dead", ensure=False)
            async with asyncio.timeout(30):
                while (message := await parked.get(fail=False)) is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)  # polling a queue: no event says it filled
            assert "is not the event's own" in str((message.headers or {})[REASON_HEADER])
            # and the node's command queue is there, declared by the node's own user
            await channel.get_queue("dimsebus.node.perm-node", ensure=True)
        # and a person who retries the story's move on the tracker's page: the tracker's
        # user recorded it, announced the retry and sent the node its resend
        requested = next(e for e in story if isinstance(e, ev.MoveRequested))
        move_id = str(requested.data.operation.id)
        await web_retry(tracker_port, move_id)
        both = {"dimsebus.action.requested", "dimsebus.retry.scheduled"}
        tracker_events = await read_events(
            admin, "dimsebus://tracker/perm-tracker", lambda es: both <= {e.type for e in es}
        )
        assert both <= {e.type for e in tracker_events}
        async with await connect(admin, "dimsebus-test-admin") as connection:
            channel = await connection.channel()
            commands = await channel.get_queue("dimsebus.node.perm-story", ensure=False)
            resend = await commands.get(fail=False)
            assert resend is not None
            assert resend.routing_key == "dimsebus.command.resend.perm-story"
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)
    # and the forgery is nowhere in the audit trail
    await services.stop_all()
    store = AuditStore.open(audit.db)
    recorded = {record.event_id for record in store.records()}
    store.close()
    assert str(forgery.id) not in recorded
    assert {str(e.id) for e in move} <= recorded
