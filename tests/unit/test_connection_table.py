"""Connections counted per address at accept: an IPv6 peer by its /64."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from dimsebus.services.node.limits import ConnectionTable, Limits, host_key


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 peer on a dual-stack socket
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_what_a_peer_is_counted_by(host: str, key: str) -> None:
    assert host_key(host) == key


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made = [socket.socket() for _ in range(6)]
    yield made
    for sock in made:
        sock.close()


def table(per_host: int) -> ConnectionTable:
    return ConnectionTable(Limits(10.0, 10.0, 16384, max_connections=100, max_per_host=per_host))


def test_addresses_of_one_ipv6_64_share_its_limit(
    sockets: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    # given a node that takes 2 associations at once from one address
    connections = table(per_host=2)
    # when one IPv6 host connects from a new address of its /64 each time
    admitted = [
        connections.admit(sock, (f"2001:db8:1:2::{n + 1:x}", 40000 + n, 0, 0))
        for n, sock in enumerate(sockets[:3])
    ]
    # then the third is refused, as if it came from one address, naming the /64
    assert [a is not None for a in admitted] == [True, True, False]
    assert connections.count("2001:db8:1:2::99") == 2
    assert "2001:db8:1:2::3: 2 open from 2001:db8:1:2::/64" in caplog.text
    # and another /64, and an IPv4 peer, are counted apart
    assert connections.admit(sockets[3], ("2001:db8:1:3::1", 40010, 0, 0)) is not None
    assert connections.admit(sockets[4], ("192.0.2.7", 40011)) is not None
    # when one of the /64's connections ends, then it may connect again
    first = admitted[0]
    assert first is not None
    connections.release(first)
    assert connections.admit(sockets[5], ("2001:db8:1:2::77", 40012, 0, 0)) is not None
    assert connections.count() == 4


def test_an_ipv4_peer_is_refused_by_its_address(
    sockets: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    connections = table(per_host=1)
    assert connections.admit(sockets[0], ("192.0.2.7", 40000)) is not None
    assert connections.admit(sockets[1], ("192.0.2.7", 40001)) is None
    assert connections.admit(sockets[2], ("192.0.2.8", 40002)) is not None
    assert "refused a connection from 192.0.2.7: 1 open from it" in caplog.text
