"""examples/subscribe_finished.py: the line it prints for a finished move."""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path
from types import ModuleType

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import every_event, sequential_ids

EXAMPLE = Path(__file__).parents[2] / "examples" / "subscribe_finished.py"


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("subscribe_finished", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finished() -> ev.MoveFinished:
    events = every_event("n1", dt.datetime(2026, 11, 30, tzinfo=dt.UTC), sequential_ids())
    return next(e for e in events if isinstance(e, ev.MoveFinished))


def test_one_line_per_move_with_revision_and_reason_when_there_are() -> None:
    # given a finished move as the tracker publishes it
    event = finished()
    data = event.data
    line = example().describe(event)
    # then its line has id, peers, outcome and counts
    assert line.startswith(
        f"{data.operation.id}  {data.requestor_ae_title}->{data.destination_ae_title}  "
        f"{data.outcome}  completed={data.counts.completed} warning={data.counts.warning} "
        f"failed={data.counts.failed}"
    )
    # and a later revision of a move refused as a whole says so, and why
    again = event.model_copy(
        update={
            "data": data.model_copy(update={"revision": 2, "outcome": "failed", "reason": "0xA801"})
        }
    )
    assert (
        example()
        .describe(again)
        .endswith(f"failed={data.counts.failed}  revision=2  reason='0xA801'")
    )
