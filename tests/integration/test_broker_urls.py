"""Several broker URLs on one real broker: a dead one is skipped, a lost connection moves on.

The broker is reached under two names (127.0.0.1 and localhost), so that moving from one
URL to the next is seen without a cluster; tests/faults/test_cluster.py kills real nodes.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit, urlunsplit

import pytest
from aio_pika.abc import AbstractConnection

from dimsebus.services.bus.connection import check_access, connect
from dimsebus.services.bus.session import supervised
from dimsebus.services.errors import ConfigError
from tests.broker import Broker
from tests.integration.peers import free_port


def on_host(url: str, host: str) -> str:
    """``url`` with another host name (same port, user, vhost)."""
    parts = urlsplit(url)
    netloc = f"{parts.username}:{parts.password}@{host}:{parts.port or 5672}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def dead(url: str) -> str:
    """``url`` on a port where nothing listens."""
    parts = urlsplit(url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{free_port()}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def test_a_command_connects_to_the_first_broker_that_answers(amqp_url: str) -> None:
    async with await connect(f"{dead(amqp_url)},{amqp_url}", "dimsebus-test-urls") as connection:
        assert not connection.is_closed
    await check_access(f"{dead(amqp_url)},{amqp_url}", "dimsebus-test-urls")


async def test_a_refusal_on_any_url_is_a_config_error_naming_it(amqp_url: str) -> None:
    wrong = on_host(amqp_url, "127.0.0.1").replace(":guest@", ":not-the-password@", 1)
    with pytest.raises(ConfigError, match=r"amqp_url amqp://guest:\*\*\*@127\.0\.0\.1.*403"):
        await check_access(f"{dead(amqp_url)},{wrong},{amqp_url}", "dimsebus-test-urls")


async def test_a_service_moves_to_the_next_broker_when_its_connection_is_lost(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    # given a service whose first broker does not answer, then two names of a live one
    first, second = on_host(broker.url, "127.0.0.1"), on_host(broker.url, "localhost")
    urls = f"{dead(broker.url)},{first},{second}"
    sessions: list[str] = []
    started = asyncio.Event()

    async def session(connection: AbstractConnection, stop: asyncio.Event) -> None:
        sessions.append(str(urlsplit(str(connection)).hostname))
        started.set()
        await stop.wait()

    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING):
        service = asyncio.create_task(supervised(urls, "dimsebus-test-moving", session, stop))
        await asyncio.wait_for(started.wait(), 30)
        # when the broker closes its connection
        started.clear()
        assert await asyncio.to_thread(broker.close_connections, "dimsebus-test-moving") == 1
        await asyncio.wait_for(started.wait(), 30)
        stop.set()
        await asyncio.wait_for(service, 30)
    # then it skipped the dead one, ran on the first live URL, and moved on to the next
    assert sessions == ["127.0.0.1", "localhost"]
    moved = [r for r in caplog.records if "moved to the broker" in r.getMessage()]
    assert len(moved) == 1
    assert moved[0].__dict__["broker"].startswith("amqp://guest:***@localhost:")
    assert moved[0].__dict__["previous"].startswith("amqp://guest:***@127.0.0.1:")
