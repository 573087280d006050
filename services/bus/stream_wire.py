"""RabbitMQ's stream protocol as data: frames, osiris chunks, and the AMQP 1.0 messages in them.

Pure functions, no sockets (``stream_client`` is the shell). References: the protocol's
``deps/rabbitmq_stream/docs/PROTOCOL.adoc`` in rabbitmq-server, osiris's ``osiris_log.erl``
for the chunk, and the AMQP 1.0 specification, part 1 (types) and 3.2 (message format).

A message published over AMQP 0-9-1 to a stream is stored as an AMQP 1.0 message: its
routing key is the ``x-routing-key`` message annotation, its body one or more ``data``
sections. Reading only those two, and skipping every other value by its width, is what
makes a record cheap to read.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass

# Commands (PROTOCOL.adoc "Commands"); a response has the top bit set.
PEER_PROPERTIES = 0x0011
SASL_HANDSHAKE = 0x0012
SASL_AUTHENTICATE = 0x0013
TUNE = 0x0014
OPEN = 0x0015
CLOSE = 0x0016
HEARTBEAT = 0x0017
SUBSCRIBE = 0x0007
DELIVER = 0x0008
CREDIT = 0x0009
METADATA_UPDATE = 0x0010
RESPONSE = 0x8000

OK = 0x01
RESPONSE_CODES = {
    0x02: "stream does not exist",
    0x03: "subscription id already exists",
    0x04: "subscription id does not exist",
    0x06: "stream not available",
    0x07: "SASL mechanism not supported",
    0x08: "authentication failure",
    0x09: "SASL error",
    0x0C: "virtual host access failure",
    0x0D: "unknown frame",
    0x0E: "frame too large",
    0x0F: "internal error",
    0x10: "access refused",
    0x11: "precondition failed",
}

# Subscribe's offset types
OFFSET_TYPES = {"first": 1, "last": 2, "next": 3}
OFFSET_NUMBER = 4
OFFSET_TIMESTAMP = 5  # milliseconds since the epoch: from the first chunk written then or after

CHUNK_HEADER = struct.Struct(">BBHIqQQiIII")  # osiris_log.erl: 48 bytes
USER_CHUNK = 0
_U32 = struct.Struct(">I")

# AMQP 1.0 message sections (part 3.2), by their small-ulong descriptor
MESSAGE_ANNOTATIONS = 0x72
DATA = 0x75
ROUTING_KEY = b"x-routing-key"


class WireError(ValueError):
    """Bytes that are not what the stream protocol or AMQP 1.0 says they should be."""


def short_string(text: str) -> bytes:
    """A protocol ``string``: int16 length, UTF-8."""
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def frame(key: int, *parts: bytes, version: int = 1) -> bytes:
    """A whole frame: uint32 size, then key, version and ``parts``."""
    body = struct.pack(">HH", key, version) + b"".join(parts)
    return _U32.pack(len(body)) + body


def request(key: int, correlation: int, *parts: bytes) -> bytes:
    """A request frame, which carries a correlation id."""
    return frame(key, _U32.pack(correlation), *parts)


def properties(values: dict[str, str]) -> bytes:
    """A ``[Property]`` array of string keys and values."""
    return struct.pack(">i", len(values)) + b"".join(
        short_string(k) + short_string(v) for k, v in values.items()
    )


def subscribe_parts(
    subscription: int, stream: str, offset: str | int | dt.datetime, credit: int
) -> bytes:
    """Subscribe's content after its correlation id: from a named offset (first, last,
    next), a number or a time, with ``credit`` chunks."""
    if isinstance(offset, dt.datetime):
        spec = struct.pack(">Hq", OFFSET_TIMESTAMP, int(offset.timestamp() * 1000))
    elif isinstance(offset, int):
        spec = struct.pack(">HQ", OFFSET_NUMBER, offset)
    else:
        spec = struct.pack(">H", OFFSET_TYPES[offset])
    return (
        struct.pack(">B", subscription)
        + short_string(stream)
        + spec
        + struct.pack(">H", credit)
        + properties({})
    )


def credit(subscription: int, chunks: int) -> bytes:
    return frame(CREDIT, struct.pack(">BH", subscription, chunks))


def read_string(data: bytes | memoryview, at: int) -> tuple[str, int]:
    """A protocol ``string`` at ``at``, and where what follows it starts."""
    (length,) = struct.unpack_from(">h", data, at)
    at += 2
    if length < 0:
        return "", at
    return bytes(data[at : at + length]).decode(errors="replace"), at + length


@dataclass(frozen=True, slots=True)
class Chunk:
    """One osiris chunk as a Deliver frame carries it: its first offset and its records."""

    first_offset: int
    records: int
    user: bool


def chunk_records(data: bytes, at: int, start: int) -> tuple[Chunk, list[tuple[int, bytes]]]:
    """The chunk at ``data[at:]`` and its records whose offset is ``start`` or after.

    A subscription at an offset is sent the whole chunk holding it, so the records
    before ``start`` are left out here. Only simple entries are expected (what the
    broker writes for AMQP 0-9-1 publishes); a sub-batch (a stream client's compressed
    batch) raises ``WireError``, naming its offset.
    """
    if len(data) - at < CHUNK_HEADER.size:
        raise WireError(f"a chunk of {len(data) - at} bytes is shorter than its header")
    # the trailer (writers' tracking data) is not sent to a subscriber
    magic, kind, entries, records, _, _, first, _, size, _, _ = CHUNK_HEADER.unpack_from(data, at)
    if magic >> 4 != 5:
        raise WireError(f"not an osiris chunk (magic {magic:#04x})")
    chunk = Chunk(first, records, kind == USER_CHUNK)
    at += CHUNK_HEADER.size
    end = at + size
    if end > len(data):
        raise WireError(f"the chunk at offset {first} claims {size} bytes, the frame has less")
    found: list[tuple[int, bytes]] = []
    if not chunk.user or first + records <= start:
        return chunk, found
    unpack = _U32.unpack_from
    offset = first
    for _ in range(entries):
        (header,) = unpack(data, at)
        if header & 0x8000_0000:
            raise WireError(f"offset {offset}: a sub-batch entry, which dimsebus never writes")
        at += 4
        if offset >= start:
            found.append((offset, data[at : at + header]))
        at += header
        offset += 1
    if at != end:
        raise WireError(f"the chunk at offset {first} has {end - at} bytes after its entries")
    return chunk, found


# AMQP 1.0 constructors by their high nibble: how many bytes of data follow (fixed
# widths), or how many bytes hold the size that follows (variable, compound, array).
_FIXED = {0x4: 0, 0x5: 1, 0x6: 2, 0x7: 4, 0x8: 8, 0x9: 16}
_SIZED = {0xA: 1, 0xC: 1, 0xE: 1, 0xB: 4, 0xD: 4, 0xF: 4}


def _skip(data: bytes, at: int) -> int:
    """Where the AMQP 1.0 value at ``at`` ends."""
    code = data[at]
    if code == 0x00:  # described: a descriptor, then the value
        return _skip(data, _skip(data, at + 1))
    nibble = code >> 4
    if nibble in _FIXED:
        return at + 1 + _FIXED[nibble]
    width = _SIZED.get(nibble)
    if width is None:
        raise WireError(f"unknown AMQP 1.0 constructor {code:#04x} at byte {at}")
    if width == 1:
        return at + 2 + data[at + 1]
    return at + 5 + int(_U32.unpack_from(data, at + 1)[0])


def _variable(data: bytes, at: int) -> bytes:
    """The bytes of the variable-width value (binary, string, symbol) at ``at``: a one-byte
    size for constructors 0xA?, a four-byte one for 0xB?."""
    if data[at] >> 4 == 0xA:
        return data[at + 2 : at + 2 + data[at + 1]]
    (size,) = _U32.unpack_from(data, at + 1)
    return data[at + 5 : at + 5 + size]


def _text(data: bytes, at: int) -> bytes | None:
    """The bytes of the string or symbol at ``at``; None for any other type."""
    return _variable(data, at) if data[at] in (0xA1, 0xA3, 0xB1, 0xB3) else None


def _routing_key(data: bytes, at: int) -> str | None:
    """``x-routing-key`` of the message-annotations map at ``at``."""
    code = data[at]
    if code == 0xC1:
        count, at = data[at + 2], at + 3
    elif code == 0xD1:
        count, at = _U32.unpack_from(data, at + 5)[0], at + 9
    else:
        raise WireError(f"message annotations are not a map (constructor {code:#04x})")
    for _ in range(count // 2):
        key = _text(data, at)
        at = _skip(data, at)
        if key == ROUTING_KEY:
            value = _text(data, at)
            return None if value is None else value.decode(errors="replace")
        at = _skip(data, at)
    return None


def amqp_message(data: bytes) -> tuple[str | None, bytes]:
    """The routing key and the body of a stream record (an AMQP 1.0 bare message).

    Raises ``WireError`` for bytes that are not one; a message without a routing key
    annotation (not published over AMQP 0-9-1) has None.
    """
    key: str | None = None
    body: list[bytes] = []
    at, end = 0, len(data)
    try:
        while at < end:
            if data[at] != 0x00 or data[at + 1] != 0x53:
                raise WireError(f"byte {at} does not start a message section")
            section = data[at + 2]
            at += 3
            if section == DATA:
                value = _binary(data, at)
                body.append(value)
                at = _skip(data, at)
            elif section == MESSAGE_ANNOTATIONS:
                key = _routing_key(data, at)
                at = _skip(data, at)
            else:
                at = _skip(data, at)
    except (IndexError, struct.error) as exc:
        raise WireError(f"a message cut short at byte {at} of {end}") from exc
    if at != end:
        raise WireError(f"a message section runs past the record's {end} bytes")
    return key, body[0] if len(body) == 1 else b"".join(body)


def _binary(data: bytes, at: int) -> bytes:
    """The bytes of the binary at ``at`` (a data section's value)."""
    if data[at] not in (0xA0, 0xB0):
        raise WireError(f"a data section that is not binary (constructor {data[at]:#04x})")
    return _variable(data, at)
