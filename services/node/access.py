"""Who may do what at the node's DICOM edge: pure decisions over its [access] and [peers].

Secure by default (DESIGN rule 8): a calling AE title that is not listed may only
do what ``access.unknown_peers`` says (C-ECHO), and an association to any other
called AE title than the node's is rejected. Two levels, as Orthanc and dcm4chee
do it:

- the association (PS3.8 9.3.4, A-ASSOCIATE-RJ): rejected when the called AE
  title is not the node's, or when the peer proposed nothing it may do;
- each request (PS3.7 C.5.2): one the peer may not make is answered
  0x0124 Refused: Not Authorized, without touching the archive.

No sockets and no pynetdicom here: ``dimsebus.services.node.gate`` applies these.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from dimsebus.services.node.config import Access, Peer, Service

NOT_AUTHORIZED = 0x0124
"""Refused: Not Authorized (PS3.7 C.5.2)."""

REFUSALS_BEFORE_ABORT = 3
"""Refused requests an association may make before the node aborts it: a peer that
keeps asking for what it may not have is probing, and each refusal is an event."""

REFUSED_DATA_LIMIT = 1024**2
"""Bytes of data set a peer may send in one message of a service it may not use, before
the node aborts instead of buffering it to refuse it."""

Reason = Literal[
    "called_ae_title_not_recognised",
    "calling_ae_title_not_recognised",
    "host_not_allowed",
    "service_not_allowed",
]

_QUERY_RETRIEVE = "1.2.840.10008.5.1.4.1.2."
_RETRIEVE_SERVICES: dict[str, Service] = {"1": "find", "2": "move", "3": "get"}
_VERIFICATION = "1.2.840.10008.1.1"
_STORAGE = "1.2.840.10008.5.1.4.1.1."


@dataclass(frozen=True, slots=True)
class Rejection:
    """An A-ASSOCIATE-RJ: rejected-permanent by the service user (PS3.8 Table 9-21)."""

    diagnostic: Literal[3, 7]  # 3: calling AE title, 7: called AE title not recognised
    reason: Reason
    detail: str

    result = 1
    source = 1


@dataclass(frozen=True, slots=True)
class Grant:
    """What an accepted association may do, and why it got no more (a host mismatch)."""

    services: frozenset[Service]
    known: bool
    note: str | None = None


def service_of(sop_class_uid: str) -> Service | None:
    """The service a presentation context's abstract syntax belongs to (PS3.4 B, C, A.4)."""
    if sop_class_uid == _VERIFICATION:
        return "echo"
    if sop_class_uid.startswith(_STORAGE):
        return "store"
    if sop_class_uid.startswith(_QUERY_RETRIEVE):
        return _RETRIEVE_SERVICES.get(sop_class_uid.rsplit(".", 1)[-1])
    return None


def services_of(sop_class_uids: Iterable[str]) -> frozenset[Service]:
    """The services a peer's proposed presentation contexts could use."""
    return frozenset(s for s in map(service_of, sop_class_uids) if s is not None)


def admit(
    access: Access,
    peers: Mapping[str, Peer],
    own_ae_title: str,
    calling: str,
    called: str,
    address: str,
    peer_addresses: Mapping[str, frozenset[str]],
    proposed: frozenset[Service],
) -> Grant | Rejection:
    """Accept an A-ASSOCIATE-RQ with what the peer may do, or reject it, and why.

    ``peer_addresses`` holds the addresses each listed peer's ``host`` resolves to.
    A listed AE title calling from another address is treated as an unknown peer:
    an AE title is no proof of identity, the address is the least one can check.
    """
    calling, called = calling.strip(), called.strip()
    if access.check_called_ae and called != own_ae_title.strip():
        return Rejection(
            7,
            "called_ae_title_not_recognised",
            f"called AE title {called!r} is not this node's ({own_ae_title.strip()!r})",
        )
    grant = _grant(access, peers.get(calling), address, peer_addresses.get(calling))
    if not grant.services & proposed:
        detail = grant.note or (
            f"calling AE title {calling!r} is not a configured peer"
            if not grant.known
            else f"{calling!r} proposed none of the services it may use"
        )
        reason: Reason = "host_not_allowed" if grant.note else "calling_ae_title_not_recognised"
        return Rejection(3, reason, detail)
    return grant


def canonical_address(address: str) -> str:
    """One text per host: an IPv4-mapped IPv6 address (``::ffff:10.0.0.5``, how a listener
    on ``::`` sees an IPv4 peer) as the IPv4 address, any other IP address in its
    canonical form (``0:0::1`` as ``::1``); anything else as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _grant(
    access: Access, peer: Peer | None, address: str, addresses: frozenset[str] | None
) -> Grant:
    if peer is None:
        return Grant(access.unknown_peers, known=False)
    allowed = {canonical_address(each) for each in addresses or ()}
    if peer.host is not None and canonical_address(address) not in allowed:
        return Grant(
            access.unknown_peers,
            known=False,
            note=f"connected from {address}, not from its configured host {peer.host}",
        )
    return Grant(peer.allow, known=True)


def may(grant: Grant, service: Service) -> bool:
    """Whether the association's peer may make a request of ``service``."""
    return service in grant.services


def refusal_comment(service: Service, calling: str) -> str:
    """The Error Comment of a 0x0124 response: at most 64 characters (PS3.7 C.4)."""
    return f"{calling.strip()[:16]} may not use {service.upper()}"[:64]


@dataclass(slots=True)
class EventBudget:
    """At most ``limit`` refusal events per address per ``window`` seconds.

    A peer can reconnect as often as it likes; every attempt is refused, but its
    events would be an unbounded stream into the log and the audit chain. Beyond
    the budget refusals are counted, and the next event that goes out carries
    the count (``suppressed``).
    """

    limit: int = 10
    window: float = 60.0
    _spent: dict[str, tuple[float, int, int]] = field(default_factory=dict)
    """address: (start of its window, events sent in it, refusals held back since)"""

    def take(self, address: str, now: float) -> int | None:
        """None if this refusal's event is held back, else how many were held before it."""
        spent = self._spent
        start, sent, held = spent.get(address, (now, 0, 0))
        if now - start >= self.window:
            start, sent = now, 0
        if sent >= self.limit:
            spent[address] = (start, sent, held + 1)
            return None
        spent[address] = (start, sent + 1, 0)
        if len(spent) > 4096:  # forget the quiet ones, not the budget of the loud
            for key in [k for k, v in spent.items() if now - v[0] >= self.window]:
                del spent[key]
        return held
