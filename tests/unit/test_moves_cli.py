"""`dimsebus moves list|show|watch` read the tracker's store as an operator would."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.cli import app
from dimsebus.services.tracker.progress import MoveState, apply, move_key
from dimsebus.services.tracker.store import open_store

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)


def fold(events: list[CloudEvent]) -> MoveState:
    state: MoveState | None = None
    for event in events:
        state = apply(state, event)
    assert state is not None
    return state


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A store with one finished move (MOVESCU -> STORESCP) and one still running.

    The running one started a minute ago: ``moves watch`` judges it by the clock, and
    one whose last event is older than the stall timeout is ``stalled``.
    """
    story = [
        e
        for e in move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=5)
        if move_key(e)
    ]
    running = [
        e
        for e in move_story(
            node_id="n2",
            start=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
            ids=sequential_ids(500),
            instances=5,
        )
        if move_key(e)
    ]
    store = open_store(str(tmp_path / "tracker.sqlite"))
    store.save(
        [fold(story), fold([e for e in running if not isinstance(e, ev.MoveCompleted)])], offset=7
    )
    store.close()
    return str(tmp_path / "tracker.sqlite")


def test_list_filters_by_outcome_ae_and_time(db: str) -> None:
    def listed(*flags: str) -> list[str]:
        result = CliRunner().invoke(app, ["moves", "list", "--json", "--db", db, *flags])
        assert result.exit_code == 0, result.output
        return [m["node_id"] for m in json.loads(result.output)]

    assert listed() == ["n1", "n2"]
    assert listed("--status", "completed_with_failures") == ["n1"]
    assert listed("--ae", "MOVESCU") == ["n1", "n2"]
    assert listed("--ae", "NOBODY") == []
    assert listed("--since", "2999-01-01T00:00:00") == []


def test_show_prints_counts_failures_and_timeline(db: str) -> None:
    listed = json.loads(CliRunner().invoke(app, ["moves", "list", "--json", "--db", db]).output)
    result = CliRunner().invoke(app, ["moves", "show", listed[0]["move_id"], "--db", db])
    assert result.exit_code == 0, result.output
    assert "completed_with_failures" in result.output
    assert "0xA700" in result.output
    assert "C-MOVE-RQ from MOVESCU to STORESCP" in result.output


def test_show_of_an_unknown_id_is_a_clear_error(db: str) -> None:
    result = CliRunner().invoke(app, ["moves", "show", "ffff", "--db", db])
    assert result.exit_code == 2
    assert "move id 'ffff' matches 0 moves" in result.output


def test_watch_draws_a_bar_for_the_running_move(db: str) -> None:
    # given `moves watch` in a terminal (a pseudo-terminal: rich redraws it live)
    terminal, its_end = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dimsebus.services",
            "moves",
            "watch",
            "--db",
            db,
            "--interval",
            "0.2",
        ],
        stdin=its_end,
        stdout=its_end,
        stderr=its_end,
        env={**os.environ, "COLUMNS": "120"},
    )
    os.close(its_end)
    try:
        # when its first frames are drawn
        output = _read_until(terminal, b"in_progress (2 failed)", within=60)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: it stops
        _read_until_exit(terminal, process, within=30)  # a full terminal would block it
        os.close(terminal)
    # then the unfinished move has a bar, labelled by the prefix that tells it from the
    # finished one (ids ...0001 and ...01f4), and the finished one has none
    assert b"00000000-0000-0000-0000-0000000001 MOVESCU->STORESCP" in output
    assert b"completed_with_failures" not in output
    assert process.returncode == 0


def _read_until_exit(terminal: int, process: subprocess.Popen[bytes], within: float) -> None:
    """Read what ``process`` writes to the terminal until it exits (``within`` seconds)."""
    deadline = time.monotonic() + within
    while process.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 0.1)
        if ready:
            try:
                os.read(terminal, 65536)
            except OSError:  # EIO: the process closed its end of the terminal
                break
    process.wait(max(deadline - time.monotonic(), 0.1))


def _read_until(terminal: int, wanted: bytes, within: float) -> bytes:
    """What the terminal shows until ``wanted`` appears (or ``within`` seconds pass)."""
    output, deadline = b"", time.monotonic() + within
    while wanted not in output and time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 0.5)
        if ready:
            output += os.read(terminal, 65536)
    return output
