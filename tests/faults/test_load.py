"""Load: 10,000 instances in one C-MOVE, and 20 C-MOVEs at once; the counts stay exact.

Memory and throughput are measured by ``python -m bench.soak``, not asserted here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.ledger import Tally
from tests.faults.load import run_load

pytestmark = pytest.mark.faults


@pytest.mark.parametrize(("moves", "instances"), [(1, 10_000), (20, 50)])
async def test_load_keeps_the_counts_exact(
    moves: int, instances: int, tmp_path: Path, vhost_url: str, report: Callable[[Tally], Tally]
) -> None:
    result = await run_load(tmp_path, vhost_url, moves, instances)
    assert result.tally.expected == moves * instances
    report(result.tally)
