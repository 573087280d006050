"""The stream protocol as data: osiris chunks and the AMQP 1.0 records in them, no sockets.

The records are built here by a small AMQP 1.0 encoder (part 1 of the specification);
``tests/integration/test_stream_log.py`` reads what RabbitMQ itself stores.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dimsebus.services.bus import stream_wire as wire
from dimsebus.services.bus.log import CLOCK_SKEW, StreamLogReader
from dimsebus.services.bus.stream_client import (
    ChunkNotReadable,
    ChunkTooLarge,
    StreamAddress,
    StreamProtocol,
)
from dimsebus.services.clock import utc_now


def symbol(text: str) -> bytes:
    data = text.encode()
    return b"\xa3" + bytes([len(data)]) + data


def string(text: str) -> bytes:
    data = text.encode()
    if len(data) < 256:
        return b"\xa1" + bytes([len(data)]) + data
    return b"\xb1" + struct.pack(">I", len(data)) + data


def binary(data: bytes) -> bytes:
    if len(data) < 256:
        return b"\xa0" + bytes([len(data)]) + data
    return b"\xb0" + struct.pack(">I", len(data)) + data


def amqp_map(pairs: list[tuple[bytes, bytes]], wide: bool = False) -> bytes:
    items = b"".join(k + v for k, v in pairs)
    if wide:
        return b"\xd1" + struct.pack(">II", len(items) + 4, 2 * len(pairs)) + items
    return b"\xc1" + bytes([len(items) + 1, 2 * len(pairs)]) + items


def section(code: int, value: bytes) -> bytes:
    return b"\x00\x53" + bytes([code]) + value


def record(routing_key: str | None, body: bytes, *, wide: bool = False, split: int = 0) -> bytes:
    """A message as RabbitMQ stores an AMQP 0-9-1 publish: header, annotations, properties,
    application properties, then the body as data sections (``split``: two of them)."""
    annotations = [(symbol("x-exchange"), string("dimsebus.events"))]
    if routing_key is not None:
        annotations.append((symbol("x-routing-key"), string(routing_key)))
    annotations.append((symbol("x-basic-priority"), b"\x50\x00"))
    fields = string("id-1") + b"\x40" + b"\x83" + bytes(8)  # message-id, null, a timestamp
    properties = b"\xc0" + bytes([len(fields) + 1, 3]) + fields
    data = [body[:split], body[split:]] if split else [body]
    return (
        section(0x70, b"\xc0\x02\x01\x41")  # header: durable
        + section(0x72, amqp_map(annotations, wide))
        + section(0x73, properties)
        + section(0x74, amqp_map([(string("n"), b"\x71\x00\x00\x00\x07")]))
        + b"".join(section(0x75, binary(part)) for part in data)
    )


def chunk(first: int, records: list[bytes], kind: int = wire.USER_CHUNK) -> bytes:
    entries = b"".join(struct.pack(">I", len(r)) + r for r in records)
    header = wire.CHUNK_HEADER.pack(
        0x50, kind, len(records), len(records), 0, 1, first, 0, len(entries), 44, 0
    )
    return header + entries


def test_a_record_gives_its_routing_key_and_body() -> None:
    assert wire.amqp_message(record("dicom.move.requested", b'{"a": 1}')) == (
        "dicom.move.requested",
        b'{"a": 1}',
    )


def test_a_body_in_several_data_sections_is_joined() -> None:
    body = b"x" * 300
    assert wire.amqp_message(record("k", body, split=100)) == ("k", body)


def test_a_message_without_a_routing_key_annotation_has_none() -> None:
    assert wire.amqp_message(record(None, b"{}")) == (None, b"{}")


@given(
    key=st.text(max_size=300),
    body=st.binary(max_size=2000),
    wide=st.booleans(),
    split=st.integers(0, 50),
)
def test_any_key_and_body_read_back(key: str, body: bytes, wide: bool, split: int) -> None:
    split = min(split, len(body) - 1) if len(body) > 1 else 0
    assert wire.amqp_message(record(key, body, wide=wide, split=split)) == (key, body)


@given(cut=st.integers(1, 200))
def test_a_record_cut_short_is_a_wire_error_or_lost_its_body(cut: int) -> None:
    """Cut inside a section, it is an error, not an IndexError; cut between two sections
    it is a shorter message, without the body."""
    whole = record("dicom.move.requested", b'{"a": 1}')
    try:
        _, body = wire.amqp_message(whole[: max(1, len(whole) - cut)])
    except wire.WireError:
        return
    assert body == b""


def test_bytes_that_are_no_message_section_are_a_wire_error() -> None:
    with pytest.raises(wire.WireError, match="does not start a message section"):
        wire.amqp_message(b'{"not": "amqp"}')
    with pytest.raises(wire.WireError, match=r"unknown AMQP 1\.0 constructor"):
        wire.amqp_message(section(0x74, b"\x33\x00"))


def test_a_chunk_gives_each_record_its_offset() -> None:
    records = [record("k", bytes([n])) for n in range(3)]
    found, taken = wire.chunk_records(b"\x00" * 5 + chunk(40, records), 5, 0)
    assert found == wire.Chunk(40, 3, user=True)
    assert taken == [(40, records[0]), (41, records[1]), (42, records[2])]


def test_records_before_the_start_offset_are_left_out() -> None:
    """A subscription at offset 41 is sent the whole chunk that holds it."""
    records = [record("k", bytes([n])) for n in range(3)]
    _, taken = wire.chunk_records(chunk(40, records), 0, 41)
    assert [offset for offset, _ in taken] == [41, 42]
    assert wire.chunk_records(chunk(40, records), 0, 43)[1] == []


def test_a_chunk_that_is_not_user_data_gives_no_records() -> None:
    found, taken = wire.chunk_records(chunk(7, [b"tracking"], kind=1), 0, 0)
    assert not found.user
    assert taken == []


def test_a_chunk_shorter_than_it_says_is_a_wire_error() -> None:
    whole = chunk(0, [record("k", b"{}")])
    with pytest.raises(wire.WireError, match="claims"):
        wire.chunk_records(whole[:-3], 0, 0)
    with pytest.raises(wire.WireError, match="shorter than its header"):
        wire.chunk_records(whole[:20], 0, 0)
    with pytest.raises(wire.WireError, match="not an osiris chunk"):
        wire.chunk_records(b"\x10" + whole[1:], 0, 0)


def test_a_sub_batch_entry_is_a_wire_error_naming_its_offset() -> None:
    entries = struct.pack(">I", 0x8000_0000 | 10) + bytes(10)
    header = wire.CHUNK_HEADER.pack(0x50, 0, 1, 3, 0, 1, 9, 0, len(entries), 0, 0)
    with pytest.raises(wire.WireError, match="offset 9: a sub-batch"):
        wire.chunk_records(header + entries, 0, 0)


def test_subscribe_names_its_offset() -> None:
    named = wire.subscribe_parts(0, "dimsebus.log", "first", 32)
    assert named == b"\x00" + wire.short_string("dimsebus.log") + b"\x00\x01\x00\x20" + bytes(4)
    numbered = wire.subscribe_parts(0, "dimsebus.log", 1234, 32)
    assert numbered[15:25] == struct.pack(">HQ", wire.OFFSET_NUMBER, 1234)
    moment = dt.datetime(2026, 12, 1, 2, 30, 0, 250_000, tzinfo=dt.UTC)
    timed = wire.subscribe_parts(0, "dimsebus.log", moment, 32)
    assert timed[15:25] == struct.pack(">Hq", wire.OFFSET_TIMESTAMP, 1_796_092_200_250)


def test_a_stream_reader_resumes_from_its_first_record_else_its_place_else_its_opening() -> None:
    address = StreamAddress("127.0.0.1", 5552, "guest", "guest", "/", None)
    # given readers opened at a place in the log ("first", an offset) or at a moment
    # ("next", "last"), to which nothing has arrived yet
    assert StreamLogReader(address, "first").resume_from == "first"
    assert StreamLogReader(address, 1234).resume_from == 1234
    for moment in ("next", "last"):
        reader = StreamLogReader(address, moment)
        opened = reader.resume_from
        # then a moment is resumed from by time, early by the clocks' possible skew: asked
        # for again, "next" would skip what was written since
        assert isinstance(opened, dt.datetime)
        assert dt.timedelta(0) < utc_now() - CLOCK_SKEW - opened < dt.timedelta(seconds=5)
        # and once records arrived, from the first of them, whatever came after
        reader._arrived([(70, b"a"), (71, b"b")])
        reader._arrived([(72, b"c")])
        assert reader.resume_from == 70


def test_a_frame_is_sized_keyed_and_versioned() -> None:
    assert (
        wire.frame(wire.CREDIT, b"\x00\x00\x10") == b"\x00\x00\x00\x07\x00\x09\x00\x01\x00\x00\x10"
    )
    assert wire.credit(0, 16) == wire.frame(wire.CREDIT, b"\x00\x00\x10")


def test_the_stream_address_is_the_amqp_brokers_host_user_and_vhost() -> None:
    address = StreamAddress.of("amqp://tracker:s3cret@mq.example:5672/dimsebus%2Fprod")
    assert (address.host, address.port, address.user, address.password, address.vhost) == (
        "mq.example",
        5552,
        "tracker",
        "s3cret",
        "dimsebus/prod",
    )
    assert address.tls is None
    assert StreamAddress.of("amqp://mq.example/").vhost == "/"


def test_amqps_reads_the_stream_over_tls_on_5551() -> None:
    address = StreamAddress.of("amqps://tracker:x@mq.example/?no_verify_ssl=1")
    assert address.port == 5551
    assert address.tls is not None
    assert address.tls.verify_mode == ssl.CERT_NONE


def test_a_broker_on_another_amqp_port_needs_its_stream_port_said() -> None:
    """A second node on this host (AMQP on 5681) would otherwise be read at the first's 5552."""
    with pytest.raises(ConnectionError, match="AMQP port is 5681, not 5672, and stream_port"):
        StreamAddress.of("amqp://guest:guest@127.0.0.1:5681/")
    assert StreamAddress.of("amqp://guest:guest@127.0.0.1:5681/", 5562).port == 5562


class Transport(asyncio.Transport):
    """What a StreamProtocol writes; no socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


def deliver(chunk_bytes: bytes) -> bytes:
    return wire.frame(wire.DELIVER, b"\x00" + chunk_bytes)


async def test_delivered_chunks_reach_the_subscriber_split_anywhere_by_the_socket() -> None:
    got: list[list[tuple[int, bytes]]] = []
    protocol = StreamProtocol(got.append, start=0)
    protocol.connection_made(Transport())
    records = [record("k", bytes([n])) for n in range(3)]
    data = deliver(chunk(0, records[:2])) + deliver(chunk(2, records[2:]))
    for at in range(0, len(data), 7):  # the socket gives 7 bytes at a time
        protocol.data_received(data[at : at + 7])
    assert got == [[(0, records[0]), (1, records[1])], [(2, records[2])]]
    assert protocol.reason is None


async def test_a_chunk_it_cannot_read_ends_the_connection_as_not_readable() -> None:
    """A stream client's sub-batch on the log: the tracker reads on over AMQP."""
    protocol = StreamProtocol(lambda records: None, start=0)
    transport = Transport()
    protocol.connection_made(transport)
    entries = struct.pack(">I", 0x8000_0000 | 10) + bytes(10)
    header = wire.CHUNK_HEADER.pack(0x50, 0, 1, 3, 0, 1, 9, 0, len(entries), 0, 0)
    protocol.data_received(deliver(header + entries))
    assert isinstance(protocol.reason, ChunkNotReadable)
    assert "offset 9: a sub-batch" in str(protocol.reason)
    assert protocol.closed.done()
    assert transport.closing


async def test_a_frame_over_the_bound_ends_the_connection_as_too_large() -> None:
    protocol = StreamProtocol(lambda records: None, start=0, max_frame=100)
    protocol.connection_made(Transport())
    protocol.data_received(struct.pack(">I", 101))
    assert isinstance(protocol.reason, ChunkTooLarge)
