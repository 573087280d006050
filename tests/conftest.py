"""Shared fixtures: the real broker (see tests/broker.py) and connections to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.topology import declare_topology
from tests.broker import (
    LOCAL_URL,
    Broker,
    docker_answers,
    local_rabbitmqctl,
    private_vhost,
    rabbitmq_container,
)

# The Reliability table's fixture and hooks, here so that the xdist controller has them too.
pytest_plugins = ["tests.faults.report"]

# Files whose tests take minutes go first: `make test` runs `--dist loadfile
# --no-loadscope-reorder` on two workers, which then end together instead of one of them
# starting the longest file when the other has nothing left.
LONGEST_FIRST = ("tests/faults/test_load.py", "tests/faults/test_cluster.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files of ``LONGEST_FIRST`` first, the rest in their order."""

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.partition("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


async def _answers(url: str) -> str | None:
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), timeout=10)
    except Exception as exc:
        return repr(exc)
    await connection.close()
    return None


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A private vhost on a real RabbitMQ; fails (never skips) when no broker answers."""
    with contextlib.ExitStack() as stack:
        if url := os.environ.get("AMQP_URL"):
            ctl = local_rabbitmqctl()
        elif docker_answers():
            url, ctl = stack.enter_context(rabbitmq_container())
        else:
            url, ctl = LOCAL_URL, local_rabbitmqctl()
        problem = asyncio.run(_answers(url))
        if problem is not None:
            pytest.fail(
                f"no RabbitMQ answers at {url} ({problem}); start one with "
                "`rabbitmq-server -detached` or set AMQP_URL",
                pytrace=False,
            )
        yield Broker(stack.enter_context(private_vhost(url, ctl)), ctl)


@pytest.fixture(scope="session")
def amqp_url(broker: Broker) -> str:
    """The URL of the test run's private vhost."""
    return broker.url


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    """A robust connection to the test vhost, with the topology declared."""
    conn = await connect(amqp_url, "dimsebus-tests")
    async with conn:
        channel = await conn.channel()
        await declare_topology(channel)
        await channel.close()
        yield conn


@pytest.fixture
async def channel(connection: AbstractRobustConnection) -> AbstractChannel:
    """A confirming channel on the test connection."""
    return await confirming_channel(connection)


POSTGRES = os.environ.get("DIMSEBUS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards.

    Each test has a schema of its own, so parallel workers never meet. No PostgreSQL is
    a failure, never a skip: `make system` (scripts/setup-system) installs and starts one.
    """
    import uuid

    import psycopg

    schema = f"dimsebus_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {POSTGRES} does not answer ({exc}); run `make system` "
            "(scripts/setup-system) or set DIMSEBUS_TEST_POSTGRES",
            pytrace=False,
        )
    admin.execute(f"CREATE SCHEMA {schema}")
    yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    admin.execute(f"DROP SCHEMA {schema} CASCADE")
    admin.close()
