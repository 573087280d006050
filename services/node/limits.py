"""What peers may hold of the node at once, each accepted connection, and refusal log lines.

No pynetdicom here: ``dimsebus.services.node.server`` applies these at its accept loop.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from dimsebus.services.node.config import NodeSettings

log = logging.getLogger("dimsebus.services.node.server")

ACCEPT_MARGIN = 8
"""Connections beyond ``max_associations`` still accepted, to be rejected in DICOM terms."""


@dataclass(frozen=True)
class Limits:
    """What one address, and all peers, may hold of the node at once, and for how long."""

    acse_timeout: float
    network_timeout: float
    max_pdu: int
    max_connections: int
    max_per_host: int

    @classmethod
    def of(cls, settings: NodeSettings) -> Limits:
        """The node's limits from its settings."""
        return cls(
            settings.acse_timeout,
            settings.network_timeout,
            settings.max_pdu,
            settings.max_associations + ACCEPT_MARGIN,
            settings.max_associations_per_host,
        )


IPV6_PREFIX = 64
"""An IPv6 peer is counted by its /64: one host is usually given a whole /64 (SLAAC, RFC
4291's interface identifiers), and an address per connection costs it nothing."""


def host_key(host: str) -> str:
    """What ``max_associations_per_host`` counts by: an IPv4 address (an IPv4-mapped IPv6
    one as IPv4), or an IPv6 address's /64 network; anything else as it is."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # no zone: fe80::1%eth0
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


@dataclass(eq=False)
class Connection:
    """An accepted connection: its peer, its ARTIM deadline, and its A-ASSOCIATE-RQ once read."""

    socket: socket.socket
    host: str
    port: int
    deadline: float  # time.monotonic() at accept + acse_timeout (ARTIM, PS3.8 9.1.5)
    key: str = ""  # what it counts against: its address, or an IPv6 address's /64
    request: bytes = b""
    adopted: bool = False  # its association thread runs, and releases it when done

    @property
    def peer(self) -> str:
        """host:port, for log lines."""
        return f"{self.host}:{self.port}"


class ConnectionTable:
    """The live connections, counted per address (``host_key``) and in all, within ``Limits``."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, Connection] = {}
        self._per_host: Counter[str] = Counter()
        self._refusals = RefusalLog()

    def admit(self, sock: socket.socket, address: Any) -> Connection | None:
        """The accepted connection, or None (and a line, now and then) if it is one too many."""
        host, port = str(address[0]), int(address[1])
        key = host_key(host)
        with self._lock:
            if self._per_host[key] >= self.limits.max_per_host:
                where = "it" if key == host else key
                reason = f"{self._per_host[key]} open from {where} (max_associations_per_host)"
            elif len(self._connections) >= self.limits.max_connections:
                reason = f"{len(self._connections)} open in all (max_associations + margin)"
            else:
                deadline = time.monotonic() + self.limits.acse_timeout
                connection = Connection(sock, host, port, deadline, key)
                self._connections[sock] = connection
                self._per_host[key] += 1
                return connection
        self._refusals.note(key, reason if key == host else f"{host}: {reason}")
        return None

    def __getitem__(self, sock: socket.socket) -> Connection:
        with self._lock:
            return self._connections[sock]

    def get(self, sock: socket.socket | None) -> Connection | None:
        """The connection of ``sock``, if it is one of the table's."""
        with self._lock:
            return self._connections.get(sock) if sock is not None else None

    def release(self, connection: Connection) -> None:
        """The connection is gone: its address may connect again."""
        with self._lock:
            if self._connections.pop(connection.socket, None) is None:
                return
            self._per_host[connection.key] -= 1
            if self._per_host[connection.key] <= 0:
                del self._per_host[connection.key]

    def count(self, host: str | None = None) -> int:
        """Live connections counted against ``host`` (its ``host_key``), or in all."""
        with self._lock:
            if host is None:
                return len(self._connections)
            return self._per_host[host_key(host)]


class RefusalLog:
    """One warning per address and interval for connections refused at accept, with a count."""

    def __init__(self, interval: float = 10.0, addresses: int = 1024) -> None:
        self._interval, self._addresses = interval, addresses
        self._since: dict[str, tuple[float, int]] = {}  # address: (last line, refusals since)

    def note(self, host: str, reason: str) -> None:
        """Count a refusal from ``host``; log it unless a line about it is recent."""
        now = time.monotonic()
        logged, count = self._since.get(host, (now - self._interval, 0))
        if now - logged < self._interval:
            self._since[host] = (logged, count + 1)
            return
        if len(self._since) >= self._addresses:  # forget the quiet ones: memory stays bounded
            self._since = {h: v for h, v in self._since.items() if now - v[0] < self._interval}
        self._since[host] = (now, 0)
        more = f" ({count} more since the last line)" if count else ""
        log.warning("refused a connection from %s: %s%s", host, reason, more)
