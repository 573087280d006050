"""Soak: the memory of every dimsebus process under long load, and the moves counted exactly.

  one large move     1 C-MOVE of 10,000 instances to a storescp
  many moves         200 C-MOVEs of 500 instances, one after another, to a storescp

The node (with its relay), the tracker (with its relay), the retrier and the audit
service run as processes against a vhost of their own, as ``tests/faults/rig.py``
starts them. Every process of their process groups is sampled every 0.5 s from
/proc (VmRSS) from before the first C-MOVE (after a warm-up move of 20 instances
that every service folds) until the tracker has folded the last event. "start" is
the first sample, "@10%" the sample a tenth of the way in (of the
time), "end" the last; "flat" says whether end / @10% <= 1.10. storescp ignores what
it receives (``--ignore``): the archive's study is moved again and again.

    python -m bench.soak [--instances 10000] [--moves 200] [--per-move 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, TextColumn
from rich.table import Table

from bench import machine
from dimsebus.services.bus.outbox import read_relay_stats
from tests.broker import LOCAL_URL, local_rabbitmqctl, private_vhost
from tests.faults.rig import Rig, new_rig, tracked_responses
from tests.integration.peers import storescp

FLAT = 1.10
WARMUP = 20  # instances of the move before the first sample


@dataclass
class Sampler:
    """RSS samples (kB) of every process of the rig's process groups, by name."""

    rig: Rig
    samples: dict[str, list[int]] = field(default_factory=dict)

    def sample(self) -> None:
        """One VmRSS sample of each live process of each service's group."""
        groups = {p.pid: name for name, p in self.rig.processes.items()}
        for pid in _pids():
            found = _status(pid)
            if found is None or found[0] not in groups:
                continue
            service = groups[found[0]]
            name = service if pid == found[0] else f"{service} {_role(pid)}"
            self.samples.setdefault(name, []).append(found[1])


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _status(pid: int) -> tuple[int, int] | None:
    """The process group and VmRSS (kB) of ``pid``, or None for one gone or without memory."""
    with contextlib.suppress(OSError, ValueError, IndexError, KeyError):
        group = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        return group, int(fields["VmRSS"].split()[0])
    return None


def _role(pid: int) -> str:
    """A child's job, from its command line (``... lifeline outbox relay ...``)."""
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"relay" in argv:
            return "relay"
        return Path(argv[0].decode(errors="replace")).name
    return "child"


@dataclass
class Soak:
    """What one soak measured."""

    name: str
    instances: int
    seconds: float
    tracked: int
    samples: dict[str, list[int]]


async def soak(root: Path, amqp_url: str, moves: int, instances: int, progress: Progress) -> Soak:
    """``moves`` C-MOVEs of one study of ``instances``, one after another, memory sampled."""
    name = f"{moves} x {instances}" if moves > 1 else f"1 move of {instances}"
    task = progress.add_task(f"{name}: setting up", total=moves * instances)
    with storescp(root / "dest" / "received", "--ignore", ae_title="DEST01") as peer:
        rig = new_rig(root / "rig", amqp_url, {peer.ae_title: peer.port})
        sampler = Sampler(rig)
        try:
            study = rig.add_study(instances, seed="soak")
            warmup = rig.add_study(WARMUP, seed="warmup")
            await rig.start_downstream()
            await rig.start_node()
            # every process has started its children, imported what traffic needs and
            # folded a move before the first sample
            await rig.movescu(warmup, peer.ae_title)
            await rig.settled(moves=1, within=300)
            sampler.sample()
            progress.update(task, description=f"{name}: moving")
            published = _Published(rig.outbox)
            started = time.perf_counter()
            work = asyncio.ensure_future(_moves(rig, study, peer.ae_title, moves))
            while not work.done():
                await asyncio.wait({work}, timeout=0.5)
                sampler.sample()
                progress.update(task, completed=published.since_start())
            await work
            seconds = time.perf_counter() - started
            progress.update(task, description=f"{name}: tracker folding")
            settling = asyncio.ensure_future(rig.settled(moves=moves + 1, within=900))
            while not settling.done():
                await asyncio.wait({settling}, timeout=0.5)
                sampler.sample()
                progress.update(task, completed=published.since_start())
            views = await settling
            progress.update(task, description=f"{name}: done", completed=moves * instances)
        finally:
            rig.stop_all()
    tracked = tracked_responses(views) - WARMUP
    return Soak(name, moves * instances, seconds, tracked, sampler.samples)


class _Published:
    """How many events the node's relay has published since the first sample (about one
    per instance moved): the progress bar's count, read from the outbox file."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.start = read_relay_stats(outbox).published

    def since_start(self) -> float:
        return read_relay_stats(self.outbox).published - self.start


async def _moves(rig: Rig, study: str, destination: str, moves: int) -> None:
    for _ in range(moves):
        await rig.movescu(study, destination)


def _mb(kilobytes: int) -> str:
    return f"{kilobytes / 1024:.1f}"


def table(results: list[Soak]) -> Table:
    """One row per soak and process: RSS at the start, a tenth of the way in, at the end."""
    out = Table(title="dimsebus soak: RSS (MB) of every process")
    for column in ("soak", "process", "start", "@10%", "end", "end / @10%", "flat"):
        out.add_column(column, justify="left" if column in ("soak", "process") else "right")
    for r in results:
        for name, samples in sorted(r.samples.items()):
            tenth = samples[min(len(samples) // 10, len(samples) - 1)]
            ratio = samples[-1] / tenth
            out.add_row(
                r.name,
                name,
                _mb(samples[0]),
                _mb(tenth),
                _mb(samples[-1]),
                f"{ratio:.2f}",
                "yes" if ratio <= FLAT else "NO",
            )
    return out


def totals(results: list[Soak]) -> Table:
    """The moves' rate and whether the tracker counted every response."""
    out = Table(title="dimsebus soak: moves")
    for column in ("soak", "instances", "seconds", "instances/s", "tracked", "exact"):
        out.add_column(column, justify="left" if column == "soak" else "right")
    for r in results:
        out.add_row(
            r.name,
            str(r.instances),
            f"{r.seconds:.0f}",
            f"{r.instances / r.seconds:.0f}",
            str(r.tracked),
            "yes" if r.tracked == r.instances else "NO",
        )
    return out


async def both(instances: int, moves: int, per_move: int, console: Console) -> list[Soak]:
    """The two soaks, each in a vhost and folder of its own; each one's table printed as it
    ends (a long run that fails in the second soak still reports the first)."""
    results: list[Soak] = []
    columns = (*Progress.get_default_columns(), TextColumn("{task.completed:.0f} events"))
    with Progress(*columns, console=console) as progress:
        for count, size in ((1, instances), (moves, per_move)):
            with (
                tempfile.TemporaryDirectory() as folder,
                private_vhost(os.environ.get("AMQP_URL", LOCAL_URL), local_rabbitmqctl()) as url,
            ):
                results.append(await soak(Path(folder), url, count, size, progress))
            progress.console.print(table(results[-1:]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=10_000, help="the one large move")
    parser.add_argument("--moves", type=int, default=200, help="moves one after another")
    parser.add_argument("--per-move", type=int, default=500, help="instances of each")
    args = parser.parse_args()
    console = Console(width=160)
    results = asyncio.run(both(args.instances, args.moves, args.per_move, console))
    console.print(table(results))
    console.print(totals(results))


if __name__ == "__main__":
    with machine.reported():
        main()
