"""Soak: the node's memory and event rate under load, with the counts checked exactly.

  one large move     1 C-MOVE of 10,000 instances to one storescp
  many moves         20 concurrent C-MOVEs of 50 instances, from 20 requestors
                     (MOVESCU01..20) to 20 storescp destinations (DEST01..20)

The node, tracker, retrier and audit service run as processes against a vhost
of their own; the node's RSS is sampled every 0.5 s from /proc (VmRSS), its
peak is the kernel's VmHWM. "flat" compares the RSS at the end of the moves
with the RSS a tenth of the way in, after start-up and warm-up.

    python -m bench.soak [--instances 10000] [--moves 20] [--per-move 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests.broker import LOCAL_URL, local_rabbitmqctl, private_vhost
from tests.faults.load import LoadResult, run_load


def _mb(kilobytes: int) -> str:
    return f"{kilobytes / 1024:.0f} MB"


def table(results: list[LoadResult]) -> Table:
    """One row per run."""
    out = Table(title="dimsebus soak: node memory and event rate")
    for column in (
        "run",
        "instances",
        "seconds",
        "events/s",
        "RSS @10%",
        "RSS @50%",
        "RSS @end",
        "peak",
        "end / @10%",
        "lost",
        "dup",
        "exact",
    ):
        out.add_column(column, justify="left" if column == "run" else "right")
    for r in results:
        memory, tally = r.memory, r.tally
        out.add_row(
            r.name,
            str(r.instances),
            f"{r.seconds:.1f}",
            f"{r.per_second:.0f}",
            _mb(memory.at(0.1)),
            _mb(memory.at(0.5)),
            _mb(memory.at(1.0)),
            _mb(memory.peak),
            f"{memory.at(1.0) / memory.at(0.1):.2f}",
            str(tally.lost),
            str(tally.duplicated),
            "yes" if tally.exact else "NO",
        )
    return out


async def soak(instances: int, moves: int, per_move: int) -> list[LoadResult]:
    """Both runs, each in a vhost and folder of its own."""
    results = []
    for count, size in ((1, instances), (moves, per_move)):
        with (
            tempfile.TemporaryDirectory() as folder,
            private_vhost(os.environ.get("AMQP_URL", LOCAL_URL), local_rabbitmqctl()) as url,
        ):
            results.append(await run_load(Path(folder), url, count, size))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--per-move", type=int, default=50)
    args = parser.parse_args()
    results = asyncio.run(soak(args.instances, args.moves, args.per_move))
    Console(width=160).print(table(results))


if __name__ == "__main__":
    main()
