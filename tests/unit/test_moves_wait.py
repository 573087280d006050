"""`dimsebus moves wait` and the ids `moves list` prints, against a tracker store on disk."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import get_args
from uuid import UUID

import pytest
from typer.testing import CliRunner

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.cli import app
from dimsebus.services.tracker.cli import FINAL_EXIT_CODES, id_width
from dimsebus.services.tracker.progress import MoveState, apply, move_key
from dimsebus.services.tracker.store import open_store

T0 = dt.datetime(2026, 11, 30, 3, tzinfo=dt.UTC)
# UUIDv7 ids of three moves started within the same millisecond-ish: the first
# two share 12 characters, the third shares 7 with them (the "01a229f").
CLOSE_IDS = (
    "01a229f2-7c3e-7000-8000-000000000001",
    "01a229f2-7c3f-7000-8000-000000000002",
    "01a229fa-0000-7000-8000-000000000003",
)


def story(
    move_id: str, node_id: str, first_id: int, *, finished: bool = True, start: dt.datetime = T0
) -> MoveState:
    """A 5-instance move (two failures) with the id ``move_id``, folded as the tracker would."""
    ids: Iterator[UUID] = itertools.chain([UUID(move_id)], sequential_ids(first_id))
    events = move_story(node_id=node_id, start=start, ids=ids, instances=5)
    state: MoveState | None = None
    for event in events:
        if move_key(event) and (finished or not isinstance(event, ev.MoveCompleted)):
            state = apply(state, event)
    assert state is not None
    return state


def saved(db: Path, *moves: MoveState, offset: int = 1) -> str:
    store = open_store(str(db))
    store.save(moves, offset=offset)
    store.close()
    return str(db)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["moves", *args])
    return result.exit_code, result.output


def test_id_width_tells_every_listed_id_apart() -> None:
    assert id_width([]) == 8
    assert id_width([CLOSE_IDS[0]]) == 8
    assert id_width([CLOSE_IDS[0], CLOSE_IDS[2]]) == 8  # they differ at the 8th character
    assert id_width(list(CLOSE_IDS)) == 13  # 12 shared, and the 13th tells them apart
    # a prefix never ends on the dash after the 8th character
    assert id_width(["01a229f2-aaaa", "01a229f3-aaaa"]) == 8
    assert id_width(["01a229f2-aaaa", "01a229f2-bbbb"]) == 10


def test_list_piped_prints_prefixes_that_show_resolves(tmp_path: Path) -> None:
    # given three moves whose UUIDv7 ids share 7 and 12 leading characters
    db = saved(
        tmp_path / "tracker.sqlite",
        *(story(move_id, f"n{i}", 100 * (i + 1)) for i, move_id in enumerate(CLOSE_IDS)),
    )
    # when `moves list` prints to a pipe (CliRunner is not a terminal; 80 columns)
    code, output = invoke("list", "--db", db)
    assert code == 0, output
    # then each id is printed with 13 characters, whole, and `moves show` finds each by it
    for move_id in CLOSE_IDS:
        prefix = move_id[:13]
        assert prefix in output
        code, shown = invoke("show", prefix, "--json", "--db", db)
        assert code == 0, shown
        assert json.loads(shown)["move_id"] == move_id
    assert "completed_with_failures" in output  # no column is cut short in a file either
    # and the 7-character prefix the issue saw is an ambiguity, not a guess
    code, shown = invoke("show", "01a229f", "--db", db)
    assert (code, shown.strip()) == (2, "error: move id '01a229f' matches 3 moves")


def test_list_in_a_narrow_terminal_still_prints_whole_prefixes(tmp_path: Path) -> None:
    # given the same three moves, listed in a 50-column terminal (rich squeezes columns)
    db = saved(
        tmp_path / "tracker.sqlite",
        *(story(move_id, f"n{i}", 100 * (i + 1)) for i, move_id in enumerate(CLOSE_IDS)),
    )
    env = {**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "50"}
    listed = subprocess.run(
        [sys.executable, "-m", "dimsebus.services", "moves", "list", "--db", db],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    # then the other columns give way, and no id prefix is cut
    shown = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout)  # without the terminal's styles
    assert max(len(line) for line in shown.splitlines()) <= 50
    for move_id in CLOSE_IDS:
        assert f"│ {move_id[:13]} │" in shown


def test_list_json_has_full_ids(tmp_path: Path) -> None:
    db = saved(tmp_path / "tracker.sqlite", story(CLOSE_IDS[0], "n1", 100))
    code, output = invoke("list", "--json", "--db", db)
    assert code == 0, output
    assert [m["move_id"] for m in json.loads(output)] == [CLOSE_IDS[0]]


def test_wait_stops_only_at_final_outcomes() -> None:
    assert set(FINAL_EXIT_CODES) <= set(get_args(ev.MoveOutcome))
    assert FINAL_EXIT_CODES == {
        "completed": 0,
        "completed_with_failures": 1,
        "failed": 1,
        "cancelled": 1,
    }


def test_wait_for_a_finished_move_prints_it_and_exits_1_for_failures(tmp_path: Path) -> None:
    db = saved(tmp_path / "tracker.sqlite", story(CLOSE_IDS[0], "n1", 100))
    code, output = invoke("wait", CLOSE_IDS[0][:10], "--db", db)
    assert code == 1, output
    assert f"move {CLOSE_IDS[0]}  MOVESCU -> STORESCP  completed_with_failures" in output
    assert "expected 5, completed 3, warning 0, failed 2, remaining 0" in output
    code, output = invoke("wait", CLOSE_IDS[0], "--json", "--db", db)
    assert code == 1
    assert json.loads(output)["outcome"] == "completed_with_failures"


def test_wait_times_out_with_3_on_running_and_stalled_moves_and_an_unknown_id(
    tmp_path: Path,
) -> None:
    # given a move running now, and one whose last event is years old (stalled: not final)
    now = dt.datetime.now(dt.UTC)
    running = story(CLOSE_IDS[0], "n1", 100, finished=False, start=now)
    stalled = story(
        CLOSE_IDS[2], "n2", 200, finished=False, start=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    )
    db = saved(tmp_path / "tracker.sqlite", running, stalled)
    for move_id, state in ((CLOSE_IDS[0], "in_progress"), (CLOSE_IDS[2], "stalled")):
        code, output = invoke("wait", move_id, "--timeout", "0.3", "--db", db)
        assert code == 3, output
        assert f"timed out after 0.3 s: move {move_id} is {state}" in output
    code, output = invoke("wait", "ffff", "--timeout", "0", "--db", db)
    assert code == 3, output
    assert "timed out after 0.0 s: no move matches 'ffff' yet" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not-an-id!"], "move id 'not-an-id!' is not a move id or a prefix of one"),
        (["01a229f"], "move id '01a229f' matches 3 moves"),
        (["01a2", "--timeout", "-1"], "--timeout -1.0 must be 0 or more seconds"),
        (["01a2", "--interval", "0"], "--interval 0.0 must be more than 0 seconds"),
    ],
)
def test_wait_with_a_bad_argument_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    db = saved(
        tmp_path / "tracker.sqlite",
        *(story(move_id, f"n{i}", 100 * (i + 1)) for i, move_id in enumerate(CLOSE_IDS)),
    )
    code, output = invoke("wait", *args, "--db", db)
    assert code == 2
    assert output.strip() == f"error: {message}"


def test_wait_on_a_missing_database_does_not_wait_forever(tmp_path: Path) -> None:
    code, output = invoke("wait", "01a2", "--db", str(tmp_path / "nowhere.sqlite"))
    assert code == 2
    assert "no tracker database there" in output
    assert not (tmp_path / "nowhere.sqlite").exists()


def test_wait_returns_when_the_tracker_commits_the_final_state(tmp_path: Path) -> None:
    # given a `moves wait` that read the move while it was still running (it says so)
    now = dt.datetime.now(dt.UTC)
    db = saved(
        tmp_path / "tracker.sqlite", story(CLOSE_IDS[0], "n1", 100, finished=False, start=now)
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "dimsebus.services", "moves", "wait", CLOSE_IDS[0][:13], "--db", db],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        assert process.stderr.readline() == f"waiting: move {CLOSE_IDS[0]} is in_progress\n"
        # when the tracker commits the move's final C-MOVE-RSP
        saved(tmp_path / "tracker.sqlite", story(CLOSE_IDS[0], "n1", 100, start=now), offset=2)
        output, errors = process.communicate(timeout=30)
    finally:
        process.kill()
    # then it prints the final state and exits 1 (two sub-operations failed)
    assert process.returncode == 1, errors
    assert f"move {CLOSE_IDS[0]}  MOVESCU -> STORESCP  completed_with_failures" in output
