"""`dimsebus moves list|show|watch` read the tracker's store as an operator would."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas import events as ev
from schemas.envelope import CloudEvent
from schemas.examples import move_story, sequential_ids
from services.cli import app
from services.tracker.progress import MoveState, apply, move_key
from services.tracker.store import open_store

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
    # given a terminal-less run of `moves watch` for two seconds
    process = subprocess.Popen(
        [sys.executable, "-m", "services", "moves", "watch", "--db", db, "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # Ctrl-C: the live display ends with a last frame
        output, _ = process.communicate()
    # then the unfinished move has a bar and the finished one does not
    assert "MOVESCU->STORESCP" in output
    assert "in_progress" in output
    assert "completed_with_failures" not in output
