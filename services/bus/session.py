"""A consumer's life on the broker: connect, run, and start over whenever the connection dies.

aio-pika's robust connection restores consumers by itself, but a restore that
fails (a quorum queue or stream still starting after a broker restart answers
``NOT_FOUND - home node ... is down``) leaves a consumer that never receives
again, silently. So consumers use a plain connection here, and a lost
connection ends the session: the supervisor connects again, declares again
and consumes again, from scratch, with a back-off (``dimsebus.services.backoff``), until it is
stopped. With several broker URLs (``amqp_url`` comma-separated) it connects to the next
one, round-robin, after a lost connection or a failed try (``connection.Brokers``), and
backs off only once every broker has failed; the session starts over on the new broker as
on the old (a stream consumer from its committed checkpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from aio_pika.abc import AbstractConnection

from dimsebus.services.backoff import Backoff
from dimsebus.services.bus.connection import Brokers, describe, masked, refusal
from dimsebus.services.bus.consumer import Consumer
from dimsebus.services.errors import ConfigError

log = logging.getLogger(__name__)

Session = Callable[[AbstractConnection, asyncio.Event], Coroutine[Any, Any, None]]


async def supervised(
    url: str,
    name: str,
    session: Session,
    stop: asyncio.Event,
    *,
    first_delay: float = 0.5,
    max_delay: float = 10.0,
) -> None:
    """Run ``session(connection, stop)`` on a fresh connection until ``stop`` is set.

    ``url`` is one broker URL or several, comma-separated. The session returns when
    ``stop`` is set; if the connection is lost or the session fails first, it is
    cancelled, and run again on a new connection, to the next broker. A broker that
    refuses the first connection (a wrong password, a vhost that does not exist) raises
    ``ConfigError``: a start-up mistake, which no retry fixes.
    """
    backoff = Backoff(first_delay, max_delay)
    brokers = Brokers(url, name)
    connected_once = False
    while not stop.is_set():
        tried = brokers.current
        try:
            connection = await brokers.open()
        except Exception as exc:
            refused = refusal(exc)
            if refused is not None and not connected_once:
                raise ConfigError(f"amqp_url {masked(tried)}: {refused}") from exc
            if not brokers.round_failed:
                log.warning("%s cannot reach %s (%s)", name, masked(tried), describe(exc))
                continue
            log.warning(
                "%s cannot reach %s (%s); trying again in %.1f s",
                name,
                masked(tried),
                describe(exc),
                backoff.upcoming,
            )
            await backoff.wait(stop)
            continue
        connected_once = True
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_, lost=lost: lost.set())
        try:
            if await _run_until_lost(connection, session, stop, lost):
                backoff.reset()  # it ran until it was lost: start over quickly
                brokers.lost()
        except Exception as exc:
            log.warning(
                "%s lost its session (%r); starting over in %.1f s", name, exc, backoff.upcoming
            )
            brokers.lost()
            await backoff.wait(stop)
        finally:
            with contextlib.suppress(Exception):
                await connection.close()


async def _run_until_lost(
    connection: AbstractConnection, session: Session, stop: asyncio.Event, lost: asyncio.Event
) -> bool:
    """True if the connection was lost while the session ran; False if it ended on ``stop``."""
    running = asyncio.create_task(session(connection, stop))
    watch = asyncio.create_task(lost.wait())
    try:
        await asyncio.wait({running, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if running.done():
        running.result()  # a session that failed raises here
        if not stop.is_set():
            raise ConnectionError("the session ended before it was stopped")
        return False
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await running
    log.warning("connection %s lost; connecting again", connection)
    return True


async def serve_supervised(
    url: str,
    name: str,
    session: Session,
    stop: asyncio.Event,
    connected: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """``supervised``, setting ``ready`` once the first session consumes (``connected``)."""
    supervisor = asyncio.create_task(supervised(url, name, session, stop))
    waiting = asyncio.create_task(connected.wait())
    await asyncio.wait({waiting, supervisor}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if ready is not None:
        ready.set()
    await supervisor


async def consume_until(
    consumer: Consumer, stop: asyncio.Event, connected: asyncio.Event, announce: str
) -> None:
    """Start ``consumer``, say ``announce``; consume until ``stop`` (``connected`` meanwhile)."""
    await consumer.start()
    log.info("%s", announce)
    connected.set()
    try:
        await stop.wait()
        await consumer.stop()
    finally:
        connected.clear()
