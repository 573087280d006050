"""The Reliability table, gathered from every pytest process that ran a scenario.

``make test`` runs the scenarios that leave the shared broker alone on the xdist workers,
beside the integration tests, and those that stop, kill or fill it (marked ``exclusive``)
afterwards, alone. Each scenario's tally is one JSON file in ``TALLIES``; the table is
written from all of them, in the order of ``FILES``, by whichever process ends a run.

The tallies of one run are in ``TALLIES/<run>``: ``DIMSEBUS_FAULTS_RUN`` names the run
(``make test`` gives both of its pytest runs one name, so the table has every scenario),
else the first process names it and its xdist workers inherit the name. Loaded through
``pytest_plugins`` in tests/conftest.py, so that the xdist controller, which collects
nothing, has these hooks too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.ledger import Tally

REPORT = Path(os.environ.get("DIMSEBUS_FAULTS_REPORT", "var/faults-report.md"))
TALLIES = REPORT.with_suffix(".d")
RUN = "DIMSEBUS_FAULTS_RUN"
HEADER = ("scenario", "injected", "expected", "received", "lost", "duplicated", "unexpected")
# The table's order: the README's, by the file a scenario is in, then as the scenarios ran.
FILES = (
    "test_broker.py",
    "test_crashes.py",
    "test_load.py",
    "test_peers.py",
    "test_poison.py",
    "test_cluster.py",
)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _run() -> Path:
    return TALLIES / os.environ[RUN]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Name the run (before xdist starts its workers, which inherit the name); forget runs
    older than a day."""
    if _is_worker(session.config):
        return
    os.environ.setdefault(RUN, f"{time.time_ns()}-{os.getpid()}")
    if TALLIES.is_dir():
        for old in TALLIES.iterdir():
            if old.stat().st_mtime < time.time() - 86_400:
                shutil.rmtree(old, ignore_errors=True)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[Tally], Tally]:
    """Record a scenario's tally for the Reliability table, and assert its invariant."""

    def record(tally: Tally) -> Tally:
        path = Path(request.node.path)
        rank = FILES.index(path.name) if path.name in FILES else len(FILES)
        _run().mkdir(parents=True, exist_ok=True)
        entry = {"rank": rank, "at": time.time_ns(), "tally": dataclasses.asdict(tally)}
        (_run() / f"{entry['at']}-{os.getpid()}.json").write_text(json.dumps(entry))
        assert tally.exact, f"invariant broken: {tally}"
        return tally

    return record


def table() -> list[str]:
    """The Reliability table's lines, from every tally of this run."""
    entries = [json.loads(path.read_text()) for path in _run().glob("*.json")]
    entries.sort(key=lambda entry: (entry["rank"], entry["at"]))
    return [
        "| " + " | ".join((*HEADER, "tracker")) + " |",
        "|" + "---|" * (len(HEADER) + 1),
        *("| " + " | ".join(Tally(**entry["tally"]).row()) + " |" for entry in entries),
    ]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the Reliability table (and write it to var/faults-report.md)."""
    if _is_worker(config) or RUN not in os.environ or not any(_run().glob("*.json")):
        return
    lines = table()
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
    terminalreporter.write_sep("=", f"reliability (also in {REPORT})")
    for line in lines:
        terminalreporter.write_line(line)
