"""Two nodes' moves never merge in the tracker's fold, even with every id in common."""

from __future__ import annotations

import datetime as dt

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.tracker.progress import MoveKey, MoveState, apply, move_key

START = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)


def test_the_same_move_served_by_two_nodes_folds_into_two_moves() -> None:
    # given two nodes whose stories share every id: operation, associations, events and
    # Message IDs (the worst case; node-stamped UUIDs make it only astronomically likely)
    first = move_story(node_id="site-a", start=START, ids=sequential_ids())
    second = move_story(node_id="site-b", start=START, ids=sequential_ids())
    assert [e.id for e in first] == [e.id for e in second]
    # when the tracker folds both logs, interleaved
    moves: dict[MoveKey, MoveState | None] = {}
    for event in (e for pair in zip(first, second, strict=True) for e in pair):
        key = move_key(event)
        if key is not None:
            moves[key] = apply(moves.get(key), event)
    # then each node has its move, with its own responses, none taken for a repeat
    assert sorted(key[0] for key in moves) == ["dimsebus://node/site-a", "dimsebus://node/site-b"]
    responses = sum(isinstance(e, ev.CStoreResponseReceived) for e in first)
    for move in moves.values():
        assert move is not None
        assert sum(o.category != "missing" for o in move.instances.values()) == responses
