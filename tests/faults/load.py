"""Load through one node: one very large C-MOVE, or many C-MOVEs at once (the fault scenarios).

Every destination is its own dcmtk storescp, so what each one answered is in
its own log; the node's memory is sampled from /proc while the moves run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from dimsebus.schemas.envelope import CloudEvent
from tests.faults.ledger import Tally, tally
from tests.faults.rig import new_rig, storescp_answers, tracked_responses
from tests.integration.peers import StoreSCP, storescp


@dataclass
class Memory:
    """RSS samples of a process (kB), and its peak as the kernel counted it (VmHWM)."""

    samples: list[int] = field(default_factory=list)
    peak: int = 0

    def sample(self, pid: int) -> None:
        """Read VmRSS and VmHWM of ``pid`` (and ignore a process that is gone)."""
        with contextlib.suppress(OSError):
            fields = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            )
            self.samples.append(int(fields["VmRSS"].split()[0]))
            self.peak = max(self.peak, int(fields["VmHWM"].split()[0]))

    def at(self, fraction: float) -> int:
        """The sample taken ``fraction`` of the way through (kB)."""
        return self.samples[min(int(len(self.samples) * fraction), len(self.samples) - 1)]


@dataclass
class LoadResult:
    """What a load run measured."""

    name: str
    instances: int
    seconds: float
    tally: Tally
    memory: Memory
    log: list[CloudEvent]

    @property
    def per_second(self) -> float:
        """Response events on the log per second of moving."""
        return self.tally.received / self.seconds


async def run_load(root: Path, amqp_url: str, moves: int, instances: int) -> LoadResult:
    """``moves`` concurrent C-MOVEs of ``instances`` each, from as many requestors."""
    with contextlib.ExitStack() as stack:
        peers: list[StoreSCP] = [
            stack.enter_context(
                storescp(root / f"dest{n:02d}" / "received", ae_title=f"DEST{n:02d}")
            )
            for n in range(1, moves + 1)
        ]
        # Every requestor is on 127.0.0.1, as behind a site's router: allow them all at once.
        rig = new_rig(
            root / "rig",
            amqp_url,
            {peer.ae_title: peer.port for peer in peers},
            max_associations_per_host=moves + 4,
        )
        try:
            studies = [rig.add_study(instances, seed=f"load{n:02d}") for n in range(1, moves + 1)]
            await rig.start()
            node = rig.processes["node"]
            memory = Memory()
            started = time.perf_counter()
            requests = asyncio.gather(
                *(
                    rig.movescu(study, peer.ae_title, ae_title=f"MOVESCU{n:02d}")
                    for n, (study, peer) in enumerate(zip(studies, peers, strict=True), 1)
                )
            )
            while not requests.done():  # a memory sample every 0.5 s, until the moves end
                memory.sample(node.pid)
                await asyncio.wait({requests}, timeout=0.5)
            await requests
            seconds = time.perf_counter() - started
            views = await rig.settled(moves=moves, within=600)
            log = rig.settled_log
            answered = [uid for peer in peers for uid in storescp_answers(peer.log)]
        finally:
            rig.stop_all()
    result = tally(
        f"load: {moves} x {instances}",
        f"{moves} concurrent C-MOVE(s) of {instances} instances from {moves} requestor(s)",
        answered,
        log,
        tracker=tracked_responses(views),
    )
    return LoadResult(result.scenario, moves * instances, seconds, result, memory, log)
