"""An open move's outcomes: compact in memory, the same JSON in the store as the model was."""

from __future__ import annotations

import datetime as dt
import gc
import json
import tracemalloc
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from dimsebus.schemas.envelope import Model
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.tracker.progress import (
    Category,
    InstanceOutcome,
    MoveState,
    apply_all,
    move_key,
)

T0 = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)


class FormerOutcome(Model):
    """InstanceOutcome as it was, a pydantic model: the store's rows were its JSON."""

    sop_instance_uid: str
    category: Category
    status: int | None
    reason: str
    attempt: int
    at: dt.datetime
    event_id: uuid.UUID
    counted: bool = False


outcomes = st.builds(
    InstanceOutcome,
    sop_instance_uid=st.from_regex(r"1\.2(\.[1-9][0-9]{0,8}){1,6}", fullmatch=True),
    category=st.sampled_from(["success", "warning", "failure", "cancel", "missing", "unsent"]),
    status=st.none() | st.integers(0, 0xFFFF),
    reason=st.text(max_size=80),
    attempt=st.integers(1, 50),
    at=st.datetimes(timezones=st.just(dt.UTC)),
    event_id=st.uuids(),
    counted=st.booleans(),
)


@given(outcome=outcomes)
def test_an_outcome_is_stored_as_the_model_stored_it_and_read_back_equal(
    outcome: InstanceOutcome,
) -> None:
    # given any outcome
    text = outcome.model_dump_json()
    # then its JSON is the former model's, field for field and in order
    former = FormerOutcome(**{name: getattr(outcome, name) for name in FormerOutcome.model_fields})
    assert text == former.model_dump_json()
    # and rows the former model wrote read back as equal outcomes, and as equal the new ones
    assert InstanceOutcome.model_validate_json(former.model_dump_json()) == outcome
    assert InstanceOutcome.model_validate_json(text) == outcome
    # and a copy changes what it is told to, nothing else
    later = outcome.model_copy(update={"attempt": outcome.attempt + 1})
    assert (later.attempt, later.sop_instance_uid) == (
        outcome.attempt + 1,
        outcome.sop_instance_uid,
    )


def test_an_unknown_field_in_a_stored_outcome_is_an_error() -> None:
    row = json.loads(
        InstanceOutcome(
            sop_instance_uid="1.2.3",
            category="success",
            status=0,
            reason="Success",
            attempt=1,
            at=T0,
            event_id=uuid.UUID(int=1),
        ).model_dump_json()
    )
    with pytest.raises(ValidationError, match="colour"):
        InstanceOutcome.model_validate_json(json.dumps({**row, "colour": "red"}))


def test_an_open_move_holds_a_few_hundred_bytes_per_instance() -> None:
    # given the responses of a move of 2,000 instances, folded as the tracker folds a batch
    instances = 2000
    story = move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=instances)
    events = [e for e in story if move_key(e) is not None]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        move = apply_all(None, events)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert isinstance(move, MoveState)
    assert len(move.instances) == instances
    # then the move holds its outcomes, the ids of the events seen and its timeline in
    # well under 400 bytes an instance beyond the events (159 measured; 1,205 when the
    # outcomes were pydantic models); the UUIDs and times it shares with the events are
    # the events' here, as they are the log's in the tracker until the move holds them
    assert held / instances < 400, f"{held / instances:.0f} bytes per instance"
    # and the outcomes of one status share one reason
    reasons = {id(o.reason) for o in move.instances.values() if o.category == "success"}
    assert len(reasons) == 1
