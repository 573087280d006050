"""Opening robust connections and channels, named so operators can find them.

A broker that refuses a connection says why in its Connection.Close (AMQP 0-9-1
``connection.close``: reply code and text), e.g. ``530 NOT_ALLOWED - vhost x not found``.
aiormq 7.2 raises a refused Connection.Open as ``InvalidFrameError`` naming only the
frame's object; ``close_reason`` recovers the frame through
``aiormq_internals.refused_open_frame``, so logs and start-up errors show the broker's
words. tests/unit/test_library_canaries.py notices when a later aiormq keeps it elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractRobustConnection
from aiormq.connection import EXCEPTION_MAPPING
from aiormq.exceptions import ConnectionClosed, ProbableAuthenticationError

from dimsebus.services.bus.aiormq_internals import refused_open_frame
from dimsebus.services.errors import ConfigError

log = logging.getLogger(__name__)

REFUSED_CODES = frozenset({402, 403, 530})
"""Reply codes that a retry does not change: invalid path, access refused, not allowed."""
_CODES = {error: code for code, error in EXCEPTION_MAPPING.items()}


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """A self-reconnecting connection; ``name`` shows in ``rabbitmqctl list_connections``."""
    return await aio_pika.connect_robust(url, client_properties={"connection_name": name})


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


def masked(url: str) -> str:
    """``url`` without its password, and its vhost named (``/`` when none is given)."""
    parts = urlsplit(url)
    user = f"{unquote(parts.username)}:***@" if parts.username else ""
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: the URL is shown as far as it reads
        port = ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path or '/'}"


async def check_access(url: str, name: str, within: float = 5.0) -> None:
    """Raise ``ConfigError`` if the broker refuses this URL's user or vhost.

    A broker that does not answer is no error here: services wait for it (and the
    node spools), but a refused login or a vhost that does not exist stays so.
    """
    try:
        connection = await asyncio.wait_for(
            aio_pika.connect(url, client_properties={"connection_name": name}), within
        )
    except Exception as exc:
        refused = refusal(exc)
        if refused is not None:
            raise ConfigError(f"amqp_url {masked(url)}: {refused}") from exc
        log.warning("%s cannot reach the broker yet (%s); starting anyway", name, describe(exc))
        return
    await connection.close()
