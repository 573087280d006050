"""Move destinations that misbehave: odd statuses, broken responses, silence, aborts."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from tests.faults.ledger import Tally, tally
from tests.faults.rig import Rig, tracked_responses
from tests.integration.peers import free_port, wait_for_port

pytestmark = pytest.mark.faults


@dataclass(frozen=True)
class OddSCP:
    """A running ``tests.faults.oddscp``: its port and what it answered."""

    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def answered(self) -> list[str]:
        """The SOP instance UIDs it answered, once per response sent."""
        return self.log.read_text().split() if self.log.exists() else []

    async def listening(self) -> None:
        """Return once it accepts associations."""
        await asyncio.to_thread(wait_for_port, self.port, 30, self.process)


@contextlib.contextmanager
def oddscp(folder: Path, mode: str, *options: str) -> Iterator[OddSCP]:
    """Run the misbehaving SCP in ``mode`` until the block ends; it may still be starting
    (``listening``), so that its start-up and the rig's overlap."""
    folder.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), folder / f"oddscp-{mode}.answers"
    argv = [sys.executable, "-m", "tests.faults.oddscp", "--port", str(port), "--mode", mode]
    with (folder / f"oddscp-{mode}.log").open("ab") as out:
        process = subprocess.Popen(
            [*argv, "--log", str(log), *options], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield OddSCP(port, log, process)
    finally:
        process.kill()
        process.wait(10)


def _statuses(log: list[CloudEvent]) -> set[int]:
    return {e.data.status for e in log if isinstance(e, ev.CStoreResponseReceived)}


def _missing(log: list[CloudEvent]) -> set[str]:
    return {e.data.reason for e in log if isinstance(e, ev.CStoreResponseMissing)}


def _comments(log: list[CloudEvent]) -> set[str]:
    return {e.data.error_comment or "" for e in log if isinstance(e, ev.CStoreResponseReceived)}


@dataclass(frozen=True)
class Misbehaviour:
    """One scenario: how the peer misbehaves, and what the log must then show."""

    mode: str
    injected: str
    instances: int
    shows: Callable[[list[CloudEvent]], bool]
    options: tuple[str, ...] = ()
    dimse_timeout: float = 2.0  # the node's; ample for a peer that answers


CASES = [
    Misbehaviour(
        "unknown-status",
        "every C-STORE-RSP has Status 0xD123 (in no status table)",
        30,
        lambda log: _statuses(log) == {0xD123},
    ),
    Misbehaviour(
        "no-status",
        "every C-STORE-RSP lacks Status",
        30,
        lambda log: _missing(log) == {"invalid_response"} and not _statuses(log),
    ),
    Misbehaviour(
        "wrong-uid",
        "every C-STORE-RSP names another SOP instance",
        30,
        lambda log: all("names SOP instance" in c for c in _comments(log)),
    ),
    Misbehaviour(
        "silent",
        "the peer accepts, then never answers (node DIMSE timeout 0.5 s)",
        10,
        lambda log: "dimse_timeout" in _missing(log) and not _statuses(log),
        dimse_timeout=0.5,
    ),
    Misbehaviour(
        "random-abort",
        "the peer aborts instead of answering, 1 in 50 (seeded)",
        200,
        lambda log: "aborted" in _missing(log) or "connection_lost" in _missing(log),
        ("--abort-rate", "0.02"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.mode for case in CASES])
async def test_misbehaving_destination_is_accounted_for(
    case: Misbehaviour,
    tmp_path: Path,
    make_rig: Callable[..., Rig],
    report: Callable[[Tally], Tally],
) -> None:
    with oddscp(tmp_path / "peer", case.mode, *case.options) as peer:
        rig = make_rig(
            {"ODDSCP": peer.port},
            policy={"max_attempts": 8 if case.mode == "random-abort" else 2},
            dimse_timeout=case.dimse_timeout,
        )
        [study] = [rig.add_study(case.instances, seed=case.mode)]
        await asyncio.gather(rig.start(), peer.listening())
        await rig.movescu(study, "ODDSCP")
        views = await rig.settled(("completed", "completed_with_failures"), within=240)
        log = rig.settled_log
    assert case.shows(log), {e.type for e in log}
    report(
        tally(
            f"peer: {case.mode}",
            case.injected,
            peer.answered(),
            log,
            tracker=tracked_responses(views),
        )
    )
