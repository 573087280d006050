"""Which machine measured a bench: its processor, its cores, its load, and its speed.

Rates move with the machine far more than with most changes: two quiet 2-core machines
of the same kind replayed the same log at 15,000 and at 5,500 events/s a few hours
apart. Each bench prints this line under its tables, with a speed reference taken at its
start and at its end: the best of five runs of one pure-Python loop, which tells a slow
machine (or one slowed down by its neighbours mid-run) from a slow change.
"""

from __future__ import annotations

import contextlib
import os
import timeit
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

REFERENCE = "sum(range(1_000_000))"


def reference_ms() -> float:
    """Milliseconds for ``REFERENCE``, best of five: lower is a faster machine."""
    return min(timeit.repeat(REFERENCE, number=5, repeat=5)) / 5 * 1000


def processor() -> str:
    """The processor's model name, as /proc/cpuinfo gives it (or the platform's)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


@dataclass(frozen=True)
class Machine:
    """The machine as a bench found it at its start."""

    reference_ms: float
    load: float

    @classmethod
    def now(cls) -> Machine:
        return cls(reference_ms(), os.getloadavg()[0])

    def caption(self) -> str:
        """One line: the processor, cores, load before the bench, and its speed reference
        at the start and now."""
        return (
            f"machine: {processor()}, {os.cpu_count()} cores, load {self.load:.2f} before; "
            f"reference loop ({REFERENCE}, best of 5) {self.reference_ms:.1f} ms at the start, "
            f"{reference_ms():.1f} ms at the end"
        )


@contextlib.contextmanager
def reported() -> Iterator[Machine]:
    """The machine as found now; its caption printed once the bench's body has finished."""
    machine = Machine.now()
    yield machine
    Console().print(machine.caption())
