"""Opening robust connections and channels, named so operators can find them.

A broker that refuses a connection says why in its Connection.Close (AMQP 0-9-1
``connection.close``: reply code and text), e.g. ``530 NOT_ALLOWED - vhost x not found``.
aiormq 7.2 raises a refused Connection.Open as ``InvalidFrameError`` naming only the
frame's object; ``close_reason`` recovers the frame through
``aiormq_internals.refused_open_frame``, so logs and start-up errors show the broker's
words. tests/unit/test_library_canaries.py notices when a later aiormq keeps it elsewhere.

``amqp_url`` may name several brokers, comma-separated (``dimsebus.services.bus.brokers``):
a short-lived command connects to the first that answers (``connect``); a long-lived
client walks them round-robin through ``Brokers``, moving to the next broker whenever its
connection fails or is lost. aio-pika's robust connection reconnects to its one URL only,
so long-lived clients use plain connections and reconnect themselves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractRobustConnection
from aio_pika.connection import make_url
from aiormq.connection import EXCEPTION_MAPPING
from aiormq.exceptions import ConnectionClosed, ProbableAuthenticationError
from pamqp.common import FieldTable

from dimsebus.services.bus.aiormq_internals import refused_open_frame
from dimsebus.services.bus.brokers import Rotation, parse_urls
from dimsebus.services.bus.brokers import masked as masked  # re-exported: callers import it here
from dimsebus.services.errors import ConfigError

log = logging.getLogger(__name__)

REFUSED_CODES = frozenset({402, 403, 530})
"""Reply codes that a retry does not change: invalid path, access refused, not allowed."""
_CODES = {error: code for code, error in EXCEPTION_MAPPING.items()}
CONNECT_WITHIN = 15.0
"""Seconds a connection may take to open: a node whose host is gone drops the handshake
without a reset, and the operating system would wait minutes before the next URL is tried."""


async def connect(urls: str, name: str) -> AbstractRobustConnection:
    """A self-reconnecting connection to the first of ``urls`` that answers; ``name`` shows
    in ``rabbitmqctl list_connections``.

    It reconnects to that broker only: for commands and tests, not for long-lived clients
    (``Brokers``). If none answers, the last broker's error is raised.
    """
    *others, last = parse_urls(urls)
    for url in others:
        try:
            return await _robust(url, name)
        except Exception as exc:
            if refusal(exc) is not None:
                raise
            why = describe(exc)
            log.info("%s cannot reach %s (%s); trying the next broker", name, masked(url), why)
    return await _robust(last, name)


_C = TypeVar("_C", bound=AbstractConnection)


async def _robust(url: str, name: str) -> AbstractRobustConnection:
    properties: FieldTable = {"connection_name": name}
    return await _connected(aio_pika.RobustConnection(make_url(url), client_properties=properties))


async def _open(url: str, name: str) -> AbstractConnection:
    properties: FieldTable = {"connection_name": name}
    return await _connected(aio_pika.Connection(make_url(url), client_properties=properties))


async def _connected(connection: _C) -> _C:
    """``connection``, connected, or closed and the error raised. (aio-pika's ``connect``
    leaves a connection that failed to the garbage collector, whose ``__del__`` schedules
    its close: outside an event loop, a coroutine never awaited, and a warning.)"""
    try:
        await connection.connect(timeout=CONNECT_WITHIN)
    except BaseException:
        await connection.close()
        raise
    return connection


class Brokers:
    """The brokers a long-lived client walks round-robin (``brokers.Rotation``).

    ``open`` connects to the current broker; a failure makes the next one current. A
    connection that is lost (``lost``) does too, and the next connection that is made to
    another broker than the last one logs one line naming the broker it moved to.
    """

    def __init__(self, urls: str, name: str) -> None:
        """``urls``: one AMQP URL or several, comma-separated; ``name``: the connection's."""
        self.name = name
        self._rotation = Rotation(parse_urls(urls))
        self._last: str | None = None

    @property
    def current(self) -> str:
        """The URL the next ``open`` connects to."""
        return self._rotation.current

    @property
    def round_failed(self) -> bool:
        """Whether every broker failed since the last connection: back off before the next."""
        return self._rotation.round_failed

    async def open(self) -> AbstractConnection:
        """A plain connection to the current broker; if it fails, the next one is current."""
        url = self._rotation.current
        try:
            connection = await _open(url, self.name)
        except Exception:
            self._rotation = self._rotation.failed()
            raise
        self._rotation = self._rotation.connected()
        if self._last is not None and self._last != url:
            log.warning(
                "%s moved to the broker %s (from %s)",
                self.name,
                masked(url),
                masked(self._last),
                extra={"client": self.name, "broker": masked(url), "previous": masked(self._last)},
            )
        self._last = url
        return connection

    def lost(self) -> None:
        """The connection to the current broker was lost: try the next one."""
        self._rotation = self._rotation.lost()


async def confirming_channel(connection: AbstractConnection) -> AbstractChannel:
    """A channel with publisher confirms on which returned mandatory messages raise."""
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


def close_reason(exc: BaseException) -> tuple[int, str] | None:
    """The broker's reply code and text if ``exc`` is its Connection.Close, else None."""
    if isinstance(exc, ProbableAuthenticationError):
        return 403, str(exc.args[0]) if exc.args else "ACCESS_REFUSED"
    if isinstance(exc, ConnectionClosed) and len(exc.args) == 2 and isinstance(exc.args[0], int):
        return exc.args[0], str(exc.args[1])
    if isinstance(exc, ConnectionClosed) and type(exc) in _CODES and exc.args:
        return _CODES[type(exc)], str(exc.args[0])  # aiormq raises these with the text only
    frame = refused_open_frame(exc.__traceback__)
    if frame is None or frame.reply_code is None:
        return None
    return int(frame.reply_code), str(frame.reply_text)


def describe(exc: BaseException) -> str:
    """One line for a failed connection: the broker's close reason if it gave one."""
    reason = close_reason(exc)
    if reason is not None:
        return f"the broker closed the connection: {reason[0]} {reason[1]}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def refusal(exc: BaseException) -> str | None:
    """Why the broker refused this user or vhost (not transient), or None."""
    reason = close_reason(exc)
    if reason is None or reason[0] not in REFUSED_CODES:
        return None
    return f"the broker refused the connection: {reason[0]} {reason[1]}"


async def check_access(urls: str, name: str, within: float = 5.0) -> None:
    """Raise ``ConfigError`` if a broker of ``urls`` refuses its user or vhost.

    The brokers are asked in turn until one answers. A broker that does not answer is
    no error here: services wait for it (and the node spools), but a refused login or a
    vhost that does not exist stays so.
    """
    for url in parse_urls(urls):
        try:
            connection = await asyncio.wait_for(_open(url, name), within)
        except Exception as exc:
            refused = refusal(exc)
            if refused is not None:
                raise ConfigError(f"amqp_url {masked(url)}: {refused}") from exc
            log.warning("%s cannot reach the broker %s yet (%s)", name, masked(url), describe(exc))
            continue
        await connection.close()
        return
    log.warning("%s reaches no broker yet; starting anyway", name)
