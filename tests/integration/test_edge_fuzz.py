"""A bounded fuzz of the node's listening socket (issue 17, item 7): random and mutated PDUs.

Each example opens a connection from 127.0.0.2 and sends random bytes, or PDUs built
from valid ones (A-ASSOCIATE-RQ, P-DATA-TF with a C-ECHO-RQ or a C-STORE-RQ whose
UIDs try to leave the archive, A-RELEASE-RQ) with a few bytes set, cut, inserted or
their length field changed. After each: the node has closed the connection, a C-ECHO
from 127.0.0.1 succeeds, and no file was written outside the archive folder.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dimsebus.services.node.config import Peer
from tests.integration.conftest import RunningNode
from tests.integration.hostile import (
    CT_IMAGE,
    VERIFICATION,
    associate_rq,
    closed,
    connect,
    echo,
    echo_rq,
    release_rq,
    store_rq,
    until,
)
from tests.integration.test_edge_limits import edge_of

pytestmark = pytest.mark.integration
ACSE = 2.0
FUZZER = "FUZZER"  # may store: the C-STOREs reach the archive
LENGTHS = (0, 1, 4, 0xFFFF, 0x10000, 131072, 131073, 1024**2 + 1, 0xFFFFFFFF)

Mutation = tuple[Any, ...]
mutations = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 4096), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 4096)),
    st.tuples(st.just("insert"), st.integers(0, 4096), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("length"), st.sampled_from(LENGTHS) | st.integers(0, 2**32 - 1)),
)


def mutate(pdu: bytes, changes: list[Mutation]) -> bytes:
    """``pdu`` with each change applied in turn (offsets wrap around its length)."""
    data = bytearray(pdu)
    for kind, *args in changes:
        at = args[0] % (len(data) + 1) if kind != "length" else 0
        if kind == "set" and data:
            data[at % len(data)] = args[1]
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = args[1]
        elif kind == "length" and len(data) >= 6:
            data[2:6] = args[0].to_bytes(4, "big")
    return bytes(data)


def hostile_uids(tmp_path: Path) -> st.SearchStrategy[str]:
    """UIDs that would leave the archive, or are no UIDs at all, or are valid."""
    return st.sampled_from(
        [
            "../../escaped",
            "../escaped.dcm",
            str(tmp_path / "absolute"),
            "1.2.3/../../../escaped",
            "..",
            "",
            "1.2." + "9" * 200,
            "A.B.C",
            "1.2.826.0.1.3680043.9.7.1",
        ]
    )


def examples(tmp_path: Path) -> st.SearchStrategy[tuple[bytes, bytes]]:
    """What one connection sends: random bytes or an RQ, then (once answered) more PDUs."""
    request = associate_rq(calling=FUZZER, contexts=(VERIFICATION, CT_IMAGE))
    changes = st.lists(mutations, max_size=3)
    store = st.builds(store_rq, hostile_uids(tmp_path), hostile_uids(tmp_path))
    second = st.one_of(st.just(echo_rq()), store, st.just(release_rq()))
    after_echo = st.builds(lambda pdu, c: echo_rq() + mutate(pdu, c), second, changes)
    return st.one_of(
        st.tuples(st.binary(max_size=4096), st.just(b"")),
        st.tuples(st.builds(mutate, st.just(request), changes), st.just(b"")),
        st.tuples(st.just(request), st.builds(mutate, second, changes)),
        st.tuples(st.just(request), after_echo),
    )


async def test_fuzz_the_listening_socket(
    tmp_path: Path, start_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    peers = {FUZZER: Peer(allow=frozenset({"echo", "store"}))}
    node = await start_node(instances=1, acse_timeout=ACSE, peers=peers)
    caplog.set_level(logging.WARNING)
    await asyncio.to_thread(_fuzz, node, tmp_path)
    assert not [r for r in caplog.records if r.exc_info], "a traceback in the log"


def _fuzz(node: RunningNode, tmp_path: Path) -> None:
    port, archive, server = node.settings.port, node.settings.archive_path, edge_of(node)
    threads = threading.active_count()
    before = _outside(tmp_path, archive)

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(examples(tmp_path))
    def one_connection(example: tuple[bytes, bytes]) -> None:
        first, then = example
        with connect(port) as sock:
            if then and _send_quietly(sock, first) and _answered(sock):
                first = then  # a peer sends its P-DATA once the A-ASSOCIATE-AC came
            _send_quietly(sock, first, last=True)
            # then the node closes the connection: nothing it was sent holds it open
            assert closed(sock, ACSE + 2)
        # and a well-behaved peer is still served, and nothing was written outside the archive
        echo(port)
        assert _outside(tmp_path, archive) <= before

    one_connection()
    assert until(lambda: server.table.count() == 0, ACSE + 2)
    assert until(lambda: threading.active_count() <= threads + 2, ACSE + 2)


def _send_quietly(sock: socket.socket, data: bytes, last: bool = False) -> bool:
    """Send (and end our side if ``last``); False if the node has closed the connection."""
    try:
        sock.sendall(data)
        if last:
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        return False
    return True


def _answered(sock: socket.socket) -> bool:
    """Whether the node answered something (the A-ASSOCIATE-AC) within acse_timeout."""
    sock.settimeout(ACSE)
    try:
        return bool(sock.recv(65536))
    except OSError:
        return False


def _outside(tmp_path: Path, archive: Path) -> set[Path]:
    """The files under ``tmp_path`` that are neither in the archive nor the outbox's."""
    return {
        path
        for path in tmp_path.rglob("*")
        if path.is_file()
        and not path.is_relative_to(archive)
        and not path.name.startswith("outbox.sqlite")
    }
