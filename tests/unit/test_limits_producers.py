"""Producers stay within the caps: big moves become more events, or listed-and-counted lists."""

from __future__ import annotations

import datetime as dt

import pytest

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import STUDY_UID, move_story, sequential_ids
from dimsebus.schemas.limits import (
    MAX_BODY_BYTES,
    MAX_FAILED_INSTANCES,
    MAX_KEYS,
    MAX_UIDS,
    chunked,
)
from dimsebus.services.errors import ConfigError
from dimsebus.services.node.scp import recorded_keys
from dimsebus.services.settings import ServiceSettings, load_settings
from dimsebus.services.tracker.progress import MoveState, apply, progress_data, retry_commands

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
INSTANCES = 5000


def big_failed_move() -> MoveState:
    """The example move, then 5,000 more of its instances that could not be sent."""
    story = move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=8)
    requested = next(e for e in story if isinstance(e, ev.MoveRequested))
    uids = [f"{STUDY_UID}.2.{n}" for n in range(1, INSTANCES + 1)]
    ids = sequential_ids(90_000)
    unsent: list[CloudEvent] = [
        ev.CStoreUnsent.model_validate(
            {
                "id": next(ids),
                "source": requested.source,
                "time": T0,
                "subject": str(requested.data.operation.id),
                "data": ev.CStoreUnsentData(
                    operation=requested.data.operation,
                    destination_ae_title="STORESCP",
                    sop_instance_uids=tuple(chunk),
                    reason="unreachable",
                    detail="x" * 1024,
                    at=T0,
                ),
            }
        )
        for chunk in chunked(uids)
    ]
    state: MoveState | None = None
    for event in [*story, *unsent]:
        state = apply(state, event)
    assert state is not None
    return state


def test_a_tracker_event_lists_the_first_failed_instances_and_counts_the_rest() -> None:
    # given a move with more than 5,000 failed instances, each with a 1 KiB reason
    move = big_failed_move()
    # when the tracker derives its progress
    data = progress_data(move, T0, dt.timedelta(minutes=5))
    # then it lists the first of them, counts the others, and fits in a body
    assert len(data.failed_instances) == MAX_FAILED_INSTANCES
    assert data.failed_instances_omitted == INSTANCES + 2 - MAX_FAILED_INSTANCES
    assert all(len(f.reason) <= 1024 for f in data.failed_instances)
    event = ev.MoveProgressed.model_validate(
        {"id": next(sequential_ids()), "source": "dimsebus://tracker/t", "time": T0}
        | {"subject": "m", "data": data}
    )
    assert len(event.model_dump_json()) <= MAX_BODY_BYTES


def test_an_operators_retry_of_a_big_move_is_several_commands() -> None:
    # given the same move
    move = big_failed_move()
    # when an operator retries it
    commands = retry_commands(move, "dimsebus://cli/op", T0, sequential_ids(500_000))
    # then every failed instance is in exactly one command, none over the cap
    sent = [uid for c in commands for uid in c.data.sop_instance_uids]
    assert len(sent) == len(set(sent)) == INSTANCES + 2
    assert max(len(c.data.sop_instance_uids) for c in commands) <= MAX_UIDS
    assert all(len(c.model_dump_json()) <= MAX_BODY_BYTES for c in commands)


def test_a_peers_identifier_keys_are_recorded_within_the_caps() -> None:
    # given a C-MOVE identifier with too many keys, one too long, and empty ones
    keys = {f"Key{n:03d}": "v" for n in range(200)}
    keys = {"Empty": "", "PatientName": "p" * 5000, **keys}
    # then the event records the first 64 non-empty ones, each cut to its cap
    recorded = recorded_keys(keys)
    assert len(recorded) == MAX_KEYS
    assert "Empty" not in recorded
    assert recorded["PatientName"] == "p" * 1021 + "..."


def test_max_body_bytes_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(ServiceSettings).max_body_bytes == MAX_BODY_BYTES
    monkeypatch.setenv("DIMSEBUS_MAX_BODY_BYTES", "1048576")
    assert load_settings(ServiceSettings).max_body_bytes == 1048576
    monkeypatch.setenv("DIMSEBUS_MAX_BODY_BYTES", "100")
    with pytest.raises(ConfigError, match=r"max_body_bytes.*100"):
        load_settings(ServiceSettings)
