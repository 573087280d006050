"""The node's access decisions, without sockets (dimsebus.services.node.access)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from dimsebus.services.node.access import (
    EventBudget,
    Grant,
    Rejection,
    admit,
    canonical_address,
    may,
    service_of,
    services_of,
)
from dimsebus.services.node.config import Access, Peer

VERIFICATION = "1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND, STUDY_MOVE, STUDY_GET = (f"1.2.840.10008.5.1.4.1.2.2.{n}" for n in (1, 2, 3))
PEERS = {
    "MOVESCU": Peer(host="pacs", allow=frozenset({"echo", "move", "find"})),
    "MODALITY": Peer(allow=frozenset({"store"})),
}
PACS = {"MOVESCU": frozenset({"10.0.0.5"})}


def _admit(
    calling: str, proposed: Iterable[str], address: str = "10.0.0.5", called: str = "DIMSEBUS"
) -> Grant | Rejection:
    return admit(
        Access(),
        PEERS,
        "DIMSEBUS",
        calling,
        called,
        address,
        PACS,
        frozenset(proposed),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("uid", "service"),
    [
        (VERIFICATION, "echo"),
        (CT_STORAGE, "store"),
        (STUDY_FIND, "find"),
        (STUDY_MOVE, "move"),
        (STUDY_GET, "get"),
        ("1.2.840.10008.5.1.4.1.2.1.2", "move"),  # Patient Root
        ("1.2.840.10008.5.1.4.31", None),  # Modality Worklist: not a service of the node
    ],
)
def test_each_abstract_syntax_belongs_to_one_service(uid: str, service: str | None) -> None:
    assert service_of(uid) == service


def test_an_unknown_peer_that_proposes_echo_may_echo_only() -> None:
    grant = _admit("STRANGER", services_of([VERIFICATION, STUDY_FIND]))
    assert isinstance(grant, Grant)
    assert (grant.known, may(grant, "echo"), may(grant, "find")) == (False, True, False)


def test_an_unknown_peer_that_proposes_nothing_it_may_do_is_rejected() -> None:
    rejection = _admit("STRANGER", {"move"})
    assert isinstance(rejection, Rejection)
    assert (rejection.result, rejection.source, rejection.diagnostic) == (1, 1, 3)
    assert rejection.reason == "calling_ae_title_not_recognised"


def test_another_called_ae_title_is_rejected_first() -> None:
    rejection = _admit("MOVESCU", {"move"}, called="OTHER")
    assert isinstance(rejection, Rejection)
    assert (rejection.diagnostic, rejection.reason) == (7, "called_ae_title_not_recognised")


def test_the_called_check_can_be_turned_off() -> None:
    grant = admit(
        Access(check_called_ae=False),
        PEERS,
        "DIMSEBUS",
        "MODALITY",
        "ANYTHING",
        "10.9.9.9",
        PACS,
        frozenset({"store"}),
    )
    assert isinstance(grant, Grant)
    assert grant.services == {"store"}


def test_a_listed_peer_from_its_host_gets_what_it_is_allowed() -> None:
    grant = _admit("MOVESCU  ", {"move", "echo"})  # AE titles are compared without padding
    assert isinstance(grant, Grant)
    assert grant.services == {"echo", "move", "find"}
    assert grant.note is None


def test_a_listed_peer_from_another_host_is_an_unknown_peer() -> None:
    grant = _admit("MOVESCU", {"move", "echo"}, address="10.6.6.6")
    assert isinstance(grant, Grant)
    assert grant.services == {"echo"}
    assert grant.note is not None
    assert "10.6.6.6" in grant.note
    rejection = _admit("MOVESCU", {"move"}, address="10.6.6.6")
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "host_not_allowed"


@pytest.mark.parametrize("address", ["::ffff:10.0.0.5", "0:0:0:0:0:ffff:a00:5", "10.0.0.5"])
def test_a_listed_peer_seen_by_a_dual_stack_listener_is_from_its_host(address: str) -> None:
    # a node listening on :: sees an IPv4 peer as its IPv4-mapped IPv6 address
    grant = _admit("MOVESCU", {"move"}, address=address)
    assert isinstance(grant, Grant)
    assert grant.services == {"echo", "move", "find"}


def test_an_ipv4_mapped_address_of_another_host_is_still_another_host() -> None:
    rejection = _admit("MOVESCU", {"move"}, address="::ffff:10.6.6.6")
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "host_not_allowed"


@pytest.mark.parametrize(
    ("address", "canonical"),
    [
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("192.0.2.7", "192.0.2.7"),
        ("pacs.example", "pacs.example"),  # not an address: as it is
    ],
)
def test_addresses_are_compared_in_one_form(address: str, canonical: str) -> None:
    assert canonical_address(address) == canonical


def test_the_event_budget_holds_back_a_flood_and_counts_it() -> None:
    budget = EventBudget(limit=2, window=60.0)
    taken = [budget.take("10.6.6.6", now=float(second)) for second in range(5)]
    assert taken == [0, 0, None, None, None]
    # another address has its own budget; the flooder's next window reports the count
    assert budget.take("10.1.1.1", now=5.0) == 0
    assert budget.take("10.6.6.6", now=61.0) == 3
