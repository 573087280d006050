"""A move as the tracker folds it from the examples' story, for tests and benchmarks."""

from __future__ import annotations

import datetime as dt

from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.tracker.progress import MoveState, apply, move_key


def folded_story(node_id: str, instances: int, start: dt.datetime) -> MoveState:
    """The move that ``move_story`` tells, folded event by event as the tracker does."""
    state: MoveState | None = None
    for event in move_story(
        node_id=node_id, start=start, ids=sequential_ids(), instances=instances
    ):
        if move_key(event) is not None:
            state = apply(state, event)
    assert state is not None
    return state
