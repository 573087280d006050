"""Publishing a batch of messages in one socket write, each confirmed on its own.

aio-pika's ``Exchange.publish``, and aiormq's ``basic_publish`` under it, write
each message as a frame set of its own and await the socket's drain and then
the confirm: publishing N messages costs N tasks, N writes and about 3N turns of
the event loop, some 130 us of CPU per message here. That was most of what the
outbox relay cost the machine it shares with the DICOM node. ``publish_batch``
marshals a whole batch into one write and registers one confirmation future per
delivery tag, the way ``basic_publish`` does: about 45 us per message.

It works with aiormq's channel internals, all through
``dimsebus.services.bus.aiormq_internals`` (which checks the aiormq version it was written
for, pinned in pyproject); ``tests/unit/test_library_canaries.py`` checks what
they rely on, and ``tests/integration/test_batch.py`` checks acks, returns, nacks
and lost connections against the real broker.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiormq
import aiormq.exceptions
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp import encode

from dimsebus.services.bus import aiormq_internals as internals
from dimsebus.services.errors import EventNacked, PublishInterrupted, UnroutableEvent

PublishOutcome = float | UnroutableEvent | EventNacked | PublishInterrupted
"""Seconds until the broker confirmed a message, or why it did not."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message ready for the wire: body, AMQP properties and routing key."""

    body: bytes
    properties: spec.Basic.Properties
    routing_key: str

    @property
    def message_id(self) -> str:
        """The message id (an event's id): how a returned message finds its publish."""
        return str(self.properties.message_id)


async def publish_batch(
    channel: aiormq.Channel, exchange: str, messages: Sequence[Outgoing], confirm_within: float
) -> list[PublishOutcome]:
    """Publish ``messages`` mandatory and confirmed; one outcome each, in order.

    A message the broker returned (no queue bound) is ``UnroutableEvent``, one it
    nacked is ``EventNacked``. One whose fate is unknown, because the channel or
    connection closed or no confirm came within ``confirm_within`` seconds, is
    ``PublishInterrupted``: the broker may hold it. Raises only when nothing was
    sent (the channel was already closed, or the write queue stayed full).
    """
    if not messages:
        return []
    loop = asyncio.get_running_loop()
    settled_at: dict[int, float] = {}
    ids = [message.message_id for message in messages]
    async with internals.publish_lock(channel):
        if channel.is_closed:  # its futures would fail at once, its frames reach no channel
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel} is closed")
        first_tag, confirmations = internals.number_publishes(channel, ids)
        for index, confirmation in enumerate(confirmations):
            confirmation.add_done_callback(partial(_settled, settled_at, index))
        payload = ChannelFrame(
            payload=marshal_publishes(
                channel.number, exchange, messages, internals.max_content_size(channel)
            ),
            should_close=False,
        )
        try:
            async with asyncio.timeout(confirm_within):
                await internals.write(channel, payload)
        except BaseException:  # not sent: the broker never saw these delivery tags
            internals.unnumber_publishes(channel, first_tag, ids)
            for confirmation in confirmations:
                confirmation.cancel()
            raise
        started = loop.time()
    try:
        await asyncio.wait(confirmations, timeout=confirm_within)
    finally:  # on time, late or cancelled: leave nothing of this batch in the channel
        for confirmation in confirmations:
            confirmation.cancel()  # a confirm that comes later is ignored, as in basic_publish
        internals.forget_message_ids(channel, first_tag, ids)
    return [
        _outcome(confirmation, message, settled_at.get(index, started) - started, confirm_within)
        for index, (confirmation, message) in enumerate(zip(confirmations, messages, strict=True))
    ]


def _settled(settled_at: dict[int, float], index: int, future: asyncio.Future[object]) -> None:
    settled_at[index] = future.get_loop().time()


def _outcome(
    confirmation: asyncio.Future[object], message: Outgoing, seconds: float, within: float
) -> PublishOutcome:
    what = f"message {message.message_id} (routing key {message.routing_key!r})"
    if confirmation.cancelled():
        return PublishInterrupted(f"{what}: unconfirmed, no confirm came within {within:g} s")
    error = confirmation.exception()
    if error is None and isinstance(confirmation.result(), spec.Basic.Ack):
        return seconds
    if error is None or isinstance(error, aiormq.exceptions.PublishError):  # returned
        return UnroutableEvent(f"{what} reaches no queue: the broker returned it")
    if isinstance(error, aiormq.exceptions.DeliveryError):
        return EventNacked(f"{what}: the broker nacked it")
    return PublishInterrupted(f"{what}: unconfirmed, {error!r}")


# The wire format of a batch (AMQP 0-9-1, 4.2.3 and 4.2.6): each message is a Basic.Publish
# method frame, a content header frame and its body frames. pamqp marshals these through
# generic per-field dispatch, some 70 calls per message, which was the largest part of the
# relay's CPU per publish; this writes the same bytes directly (tests/unit/test_batch_wire.py
# checks them against pamqp's).

_FRAME = struct.Struct(">BHI")  # type, channel, payload size
_FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
_PUBLISH = struct.pack(">HHH", spec.Basic.Publish.index >> 16, spec.Basic.Publish.index & 0xFFFF, 0)
_CONTENT = struct.Struct(">HHQ")  # class (Basic), weight (0), body size
_FLAGS = struct.Struct(">H")


def _short_string(value: object) -> bytes:
    """An AMQP shortstr, as pamqp encodes it (pamqp raises on what this does not handle)."""
    if isinstance(value, str):
        data = value.encode()
        if len(data) <= 255:
            return bytes((len(data),)) + data
    return encode.short_string(value)  # type: ignore[arg-type]


def _octet(value: object) -> bytes:
    if isinstance(value, int) and 0 <= value <= 255:
        return bytes((value,))
    return encode.octet(value)  # type: ignore[arg-type]


def _encoder(kind: str) -> Callable[[Any], bytes]:
    fast: dict[str, Callable[[Any], bytes]] = {
        "shortstr": _short_string,
        "octet": _octet,
        "table": encode.field_table,
    }
    return fast.get(kind) or partial(encode.by_type, data_type=kind)


_PROPERTIES = tuple(
    (name, spec.Basic.Properties.flags[name], _encoder(spec.Basic.Properties.amqp_type(name)))
    for name in spec.Basic.Properties.__slots__
)
"""Each property in its wire order: its flag bit and its encoder."""


def _properties(properties: spec.Basic.Properties) -> bytes:
    """The property flags and list of a content header, as ``Properties.marshal``."""
    flags = 0
    parts = [b""]
    for name, flag, encoder in _PROPERTIES:
        value = getattr(properties, name)
        if value is not None and value != "":
            flags |= flag
            parts.append(encoder(value))
    parts[0] = _FLAGS.pack(flags & 0xFFFE)  # 14 properties: one flag word, no continuation
    return b"".join(parts)


def marshal_publishes(
    channel: int, exchange: str, messages: Sequence[Outgoing], max_content: int
) -> bytes:
    """The frames of mandatory publishes of ``messages`` on ``channel``, as one payload.

    Bodies are split in frames of ``max_content`` bytes (the connection's frame size less
    a frame's 8 bytes of overhead), as aiormq splits them.
    """
    spec.Basic.Publish(exchange=exchange)  # refuses a name AMQP does not allow, as pamqp does
    publish = _PUBLISH + _short_string(exchange)
    parts: list[bytes] = []
    for message in messages:
        method = publish + _short_string(message.routing_key) + b"\x01"  # mandatory, not immediate
        body = message.body
        header = _CONTENT.pack(spec.Basic.frame_id, 0, len(body)) + _properties(message.properties)
        parts += (
            _FRAME.pack(_METHOD, channel, len(method)),
            method,
            _FRAME_END,
            _FRAME.pack(_HEADER, channel, len(header)),
            header,
            _FRAME_END,
        )
        for start in range(0, len(body), max_content):
            chunk = body[start : start + max_content]
            parts += (_FRAME.pack(_BODY, channel, len(chunk)), chunk, _FRAME_END)
    return b"".join(parts)
