"""A C-STORE-RQ from a file, written by the node's thread, is pynetdicom's PDUs byte for byte."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from dimsebus.services.node.pynetdicom_internals import p_data_pdus, send_buffers

CT = "1.2.840.10008.5.1.4.1.1.2"


def request(path: Path, offset: int, message_id: int, uid: str) -> C_STORE_RQ:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = uid
    primitive.Priority = 2
    primitive._dataset_path = (path, offset)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return message


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60, deadline=None
)
@given(
    data_set=st.binary(max_size=40_000),
    preamble=st.binary(max_size=300),
    max_pdu=st.sampled_from([0, 7, 8, 100, 4096, 16_382, 16_384, 65_536, 1_000_000]),
    context_id=st.integers(1, 255).filter(lambda n: n % 2 == 1),
    message_id=st.integers(1, 65_535),
    uid=st.from_regex(r"1\.2\.[1-9][0-9]{0,20}(\.[1-9][0-9]{0,10}){0,4}", fullmatch=True).filter(
        lambda uid: len(uid) <= 64
    ),
)
def test_the_same_pdus_as_pynetdicom(
    tmp_path: Path,
    data_set: bytes,
    preamble: bytes,
    max_pdu: int,
    context_id: int,
    message_id: int,
    uid: str,
) -> None:
    # given a file whose data set starts after a header pynetdicom skips
    path = tmp_path / "instance.dcm"
    path.write_bytes(preamble + data_set)
    message = request(path, len(preamble), message_id, uid)
    # when its PDUs are made both ways, then they are the same bytes
    pynetdicom = b"".join(
        P_DATA_TF(pdata).encode() for pdata in message.encode_msg(context_id, max_pdu)
    )
    command = encode(message.command_set, True, True)
    assert command is not None
    ours = p_data_pdus(context_id, max_pdu, command, data_set)
    assert b"".join(bytes(buffer) for buffer in ours) == pynetdicom


def test_send_buffers_writes_every_byte_in_order_through_partial_writes() -> None:
    # given a socket whose peer reads slowly (a small buffer: sendmsg writes part at a time)
    writer, reader = socket.socketpair()
    writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer.settimeout(5)
    buffers = [bytes([n % 251]) * (n * 37 % 5000 + 1) for n in range(3000)]
    expected = b"".join(buffers)
    received = bytearray()

    def read_all() -> None:
        while len(received) < len(expected):
            received.extend(reader.recv(65_536))

    draining = threading.Thread(target=read_all)
    draining.start()
    # when they are sent (more buffers than one sendmsg takes)
    send_buffers(writer, buffers)
    draining.join(10)
    # then the peer has every byte, in order
    assert bytes(received) == expected
    writer.close()
    reader.close()
