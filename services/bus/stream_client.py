"""A subscription to ``dimsebus.log`` over RabbitMQ's stream protocol (the ``rabbitmq_stream``
plugin, port 5552, or 5551 over TLS).

Only what reading the log needs: connect and authenticate (PLAIN), tune, open the
vhost, subscribe from an offset, give credit as chunks are taken, answer heartbeats.
Each Deliver frame is one osiris chunk of many records, read in one go
(``stream_wire.chunk_records``): no frame, task or acknowledgement per message, which
is what reading the log over AMQP 0-9-1 costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

import yarl

from dimsebus.services.bus import stream_wire as wire

STREAM_PORT = 5552
STREAM_TLS_PORT = 5551
AMQP_PORT = 5672
AMQPS_PORT = 5671
# A Deliver frame is one whole osiris chunk: what the broker's writer batched, whatever
# frame_max says (brokers before 4.3.5 send it anyway; later ones close the connection
# with "frame too large"). This client accepts the broker's frame_max in Tune and reads
# frames up to MAX_FRAME, a memory bound; a larger chunk ends the subscription with
# ChunkTooLarge (a ChunkNotReadable), and the tracker reads on over AMQP.
MAX_FRAME = 64 * 1024 * 1024
FRAME_TOO_LARGE = 0x0E
HEARTBEAT = 60  # seconds, at most; the broker's Tune may ask for less
SUBSCRIPTION = 0
REQUEST_TIMEOUT = 10.0

_HEADER = struct.Struct(">HH")


class ChunkNotReadable(ConnectionError):
    """A chunk of the log this client cannot read (a stream client's sub-batch, bytes that
    are not the protocol's): the subscription would stop there again. Read it over AMQP,
    to which the broker hands each message on its own.

    ``resume_from``, set by the reader that stopped (``StreamLogReader``), is where to read
    the log again so that nothing it did not give out is missed.
    """

    resume_from: str | int | dt.datetime | None = None


class ChunkTooLarge(ChunkNotReadable):
    """A chunk of the log is larger than a frame may be, here or for the broker."""


class StreamRefused(ConnectionError):
    """The broker answered a request with an error code (``code``, PROTOCOL.adoc)."""

    def __init__(self, what: str, code: int) -> None:
        self.code = code
        reason = wire.RESPONSE_CODES.get(code, f"code {code:#04x}")
        super().__init__(f"{what}: {reason}")


@dataclass(frozen=True)
class StreamAddress:
    """Where and as whom to read the stream: the AMQP URL's host, user and vhost."""

    host: str
    port: int
    user: str
    password: str
    vhost: str
    tls: ssl.SSLContext | None

    @classmethod
    def of(cls, amqp_url: str, port: int | None = None) -> StreamAddress:
        """The stream protocol's address for a broker reached at ``amqp_url``: its host,
        user, password and vhost, and for ``amqps`` TLS with the URL's ``cafile``,
        ``capath``, ``certfile``, ``keyfile`` and ``no_verify_ssl``, as aiormq reads them.

        ``port`` None is 5552 (5551 for amqps), for a broker on the standard AMQP port;
        for one on another port it raises ``ConnectionError`` rather than guess.
        """
        url = yarl.URL(amqp_url)
        secure = url.scheme == "amqps"
        standard = AMQPS_PORT if secure else AMQP_PORT
        if port is None and url.explicit_port not in (None, standard):
            # A broker on another AMQP port (a second node on this host, a mapped port)
            # has its stream port elsewhere too: 5552 could be another broker's log.
            raise ConnectionError(
                f"the broker's AMQP port is {url.explicit_port}, not {standard}, "
                "and stream_port is not set"
            )
        vhost = unquote(url.raw_path[1:]) if len(url.raw_path) > 1 else "/"
        return cls(
            host=url.host or "127.0.0.1",
            port=port or (STREAM_TLS_PORT if secure else STREAM_PORT),
            user=url.user or "guest",
            password=url.password or "guest",
            vhost=vhost,
            tls=_tls_context(url) if secure else None,
        )


def _tls_context(url: yarl.URL) -> ssl.SSLContext:
    query = url.query
    context = ssl.create_default_context(cafile=query.get("cafile"), capath=query.get("capath"))
    if query.get("certfile"):
        context.load_cert_chain(query["certfile"], query.get("keyfile"))
    if query.get("no_verify_ssl", "0") not in ("0", "false", ""):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


Records = Callable[[list[tuple[int, bytes]]], None]  # a chunk's (offset, record)s


class StreamProtocol(asyncio.Protocol):
    """The connection's frames: responses to this client's requests, Deliver, Heartbeat,
    Tune and Close from the broker. Delivered records go to ``on_records``."""

    def __init__(self, on_records: Records, start: int, max_frame: int = MAX_FRAME) -> None:
        self._on_records = on_records
        self.max_frame = max_frame
        self.start = start  # records before this offset are left out
        self._buffer = bytearray()
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._correlation = 0
        self.tune: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.heard = asyncio.get_running_loop().time()
        self.reason: BaseException | None = None  # why the connection ended

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.end(exc or ConnectionError("the broker closed the stream connection"))

    def end(self, exc: BaseException) -> None:
        """End the connection: pending requests fail with ``exc``, ``closed`` is set."""
        if self.reason is None:
            self.reason = exc
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(exc)
        if not self.tune.done():
            self.tune.set_exception(exc)
            self.tune.exception()  # a handshake refused earlier never awaits it
        if not self.closed.done():
            self.closed.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def call(self, key: int, *parts: bytes, what: str) -> bytes:
        """Send a request; its response's content after the response code, once it is OK."""
        self._correlation += 1
        correlation = self._correlation
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = waiter
        self.send(wire.request(key, correlation, *parts))
        try:
            content = await asyncio.wait_for(waiter, REQUEST_TIMEOUT)
        finally:
            self._pending.pop(correlation, None)
        (code,) = struct.unpack_from(">H", content)
        if code != wire.OK:
            raise StreamRefused(what, code)
        return content[2:]

    def data_received(self, data: bytes) -> None:
        self.heard = asyncio.get_running_loop().time()
        buffer = self._buffer
        buffer += data
        at = 0
        while len(buffer) - at >= 4:
            (size,) = struct.unpack_from(">I", buffer, at)
            if size > self.max_frame:
                self.end(ChunkTooLarge(f"a frame of {size} bytes, over {self.max_frame}"))
                return
            if size < 4:
                self.end(ChunkNotReadable(f"a stream frame of {size} bytes"))
                return
            if len(buffer) - at - 4 < size:
                break
            body = bytes(buffer[at + 4 : at + 4 + size])
            at += 4 + size
            try:
                self._frame(body)
            except (wire.WireError, struct.error) as exc:
                self.end(ChunkNotReadable(f"the stream sent what cannot be read: {exc}"))
                return
        del buffer[:at]

    def _frame(self, body: bytes) -> None:
        key, _version = _HEADER.unpack_from(body)
        if key == wire.DELIVER:
            _, records = wire.chunk_records(body, 5, self.start)
            self._on_records(records)
        elif key & wire.RESPONSE:
            (correlation,) = struct.unpack_from(">I", body, 4)
            waiter = self._pending.get(correlation)
            if waiter is not None and not waiter.done():
                waiter.set_result(body[8:])
        elif key == wire.HEARTBEAT:
            pass  # heard: what keeps the connection alive on this side
        elif key == wire.TUNE:
            if not self.tune.done():
                self.tune.set_result(struct.unpack_from(">II", body, 4))
        elif key == wire.CLOSE:
            (correlation, code) = struct.unpack_from(">IH", body, 4)
            reason, _ = wire.read_string(body, 10)
            self.send(wire.frame(wire.CLOSE | wire.RESPONSE, struct.pack(">IH", correlation, 1)))
            why = f"the broker closed the stream connection: {reason}"
            self.end(ChunkTooLarge(why) if code == FRAME_TOO_LARGE else ConnectionError(why))
        elif key == wire.METADATA_UPDATE:
            # the stream was deleted or its leader moved: read again, from the checkpoint
            self.end(ConnectionError("the stream's metadata changed (deleted or moved)"))


class StreamSubscription:
    """The log read over the stream protocol, from ``start`` on; records go to ``on_records``
    as ``(offset, record)`` lists, one list per chunk.

    ``open`` asks for ``credit`` chunks; ``give_credit`` asks for more. The connection's
    end (lost, closed, the stream deleted) sets ``ended``, and ``reason`` says why.
    """

    def __init__(
        self, address: StreamAddress, name: str, on_records: Records, max_frame: int = MAX_FRAME
    ) -> None:
        self._address = address
        self._name = name
        self._on_records = on_records
        self._max_frame = max_frame
        self._protocol: StreamProtocol | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None

    @property
    def reason(self) -> BaseException | None:
        return None if self._protocol is None else self._protocol.reason

    @property
    def ended(self) -> asyncio.Future[None]:
        assert self._protocol is not None
        return self._protocol.closed

    async def open(self, stream: str, offset: str | int | dt.datetime, credit: int) -> None:
        """Connect, authenticate and subscribe; raises ``ConnectionError`` (``StreamRefused``
        for an answer that is not OK) when it cannot."""
        address = self._address
        loop = asyncio.get_running_loop()
        start = offset if isinstance(offset, int) else 0
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: StreamProtocol(self._on_records, start, self._max_frame),
                address.host,
                address.port,
                ssl=address.tls,
            ),
            REQUEST_TIMEOUT,
        )
        self._protocol = protocol
        try:
            await self._handshake(protocol)
            await protocol.call(
                wire.SUBSCRIBE,
                wire.subscribe_parts(SUBSCRIPTION, stream, offset, credit),
                what=f"subscribing to {stream}",
            )
        except BaseException:
            await self.close()
            raise

    async def _handshake(self, protocol: StreamProtocol) -> None:
        address = self._address
        await protocol.call(
            wire.PEER_PROPERTIES,
            wire.properties({"connection_name": self._name, "product": "dimsebus"}),
            what="peer properties",
        )
        await protocol.call(wire.SASL_HANDSHAKE, what="SASL handshake")
        secret = b"\0" + address.user.encode() + b"\0" + address.password.encode()
        await protocol.call(
            wire.SASL_AUTHENTICATE,
            wire.short_string("PLAIN"),
            struct.pack(">i", len(secret)) + secret,
            what=f"authenticating as {address.user}",
        )
        frame_max, heartbeat = await asyncio.wait_for(protocol.tune, REQUEST_TIMEOUT)
        frame_max = min(frame_max or protocol.max_frame, protocol.max_frame)
        heartbeat = min(heartbeat or HEARTBEAT, HEARTBEAT)
        protocol.send(wire.frame(wire.TUNE, struct.pack(">II", frame_max, heartbeat)))
        await protocol.call(
            wire.OPEN, wire.short_string(address.vhost), what=f"opening vhost {address.vhost}"
        )
        self._heartbeat_task = asyncio.create_task(self._heartbeats(protocol, heartbeat))

    async def _heartbeats(self, protocol: StreamProtocol, every: int) -> None:
        """Send a heartbeat every ``every`` seconds; a broker not heard from for two of
        them is gone (the connection is closed, ``ended`` set)."""
        loop = asyncio.get_running_loop()
        while not protocol.closed.done():
            protocol.send(wire.frame(wire.HEARTBEAT))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(protocol.closed), every)
            if loop.time() - protocol.heard > 2 * every:
                protocol.end(ConnectionError(f"no heartbeat from the broker in {2 * every} s"))

    def give_credit(self, chunks: int) -> None:
        if self._protocol is not None and chunks > 0:
            self._protocol.send(wire.credit(SUBSCRIPTION, chunks))

    async def close(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        protocol = self._protocol
        if protocol is not None and not protocol.closed.done():
            with contextlib.suppress(ConnectionError, TimeoutError, StreamRefused):
                await protocol.call(
                    wire.CLOSE, struct.pack(">H", 1), wire.short_string("OK"), what="closing"
                )
            protocol.end(ConnectionError("closed"))
