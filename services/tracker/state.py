"""A C-MOVE's state as the tracker keeps it: the models ``progress`` and ``pulls`` fold into.

Pure data, and the one rule both folds share (``with_outcomes``): the fold of the
C-MOVEs the node serves (``progress``) and of those it sends as Move SCU (``pulls``)
both import it, and neither imports the other's internals.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from uuid import UUID

from pydantic import ConfigDict, Field, TypeAdapter

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import Model

Category = Literal["success", "warning", "failure", "cancel", "missing", "unsent"]
MoveKey = tuple[str, UUID]


@dataclass(frozen=True, slots=True)
class InstanceOutcome:
    """The latest known result of one SOP instance's sub-operation.

    A slotted dataclass, not a pydantic model: an open move holds one per instance, and
    a 10,000-instance move held 12 MB of them as models (about 1.2 KB each, their
    ``__dict__`` and fields-set most of it) against about 120 bytes each as this (the
    reason string shared: one per status). Validated and serialised by pydantic as the
    model was (``model_validate_json``, ``model_dump_json``: the store's rows are the same
    JSON), and copied as a model is (``model_copy``).
    """

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    sop_instance_uid: str
    category: Category
    status: int | None
    reason: str
    attempt: int
    at: dt.datetime
    event_id: UUID
    # Told by a final C-MOVE-RSP's counts (``pulls``), not by an event about the instance.
    counted: bool = False

    def __post_init__(self) -> None:
        # Outcomes of one move repeat a few reasons thousands of times: keep one copy each.
        object.__setattr__(self, "reason", sys.intern(self.reason))

    @property
    def rank(self) -> tuple[int, bool, dt.datetime, str]:
        """Later attempts win; within one, an event about the instance over a final
        response's counts, then the later response (event id breaks ties)."""
        return (self.attempt, not self.counted, self.at, str(self.event_id))

    def model_copy(self, update: dict[str, Any] | None = None) -> InstanceOutcome:
        """This outcome with the fields of ``update`` replaced (not validated, as a model's)."""
        return dataclasses.replace(self, **(update or {}))

    def model_dump_json(self) -> str:
        """The outcome as JSON, as the pydantic model dumped it."""
        return _OUTCOME_JSON.dump_json(self).decode()

    @classmethod
    def model_validate_json(cls, text: str | bytes) -> InstanceOutcome:
        """An outcome from ``model_dump_json``'s JSON, validated (unknown fields are errors)."""
        return _OUTCOME_JSON.validate_json(text)


_OUTCOME_JSON: TypeAdapter[InstanceOutcome] = TypeAdapter(InstanceOutcome)


class RetryMark(Model):
    """The retrier's latest decision about one instance: the next attempt, or giving up."""

    attempt: int
    retry_at: dt.datetime | None = None
    gave_up: str | None = None

    @property
    def rank(self) -> tuple[int, bool, str]:
        """Later attempts win; for one attempt, giving up wins over a schedule."""
        return (self.attempt, self.gave_up is not None, self.gave_up or "")


class FinishMark(Model):
    """The last ``dimsebus.move.finished`` the tracker derived: its revision and what it said.

    ``outcome`` is None once the move left that final outcome (it is retrying again):
    the next final outcome is a new revision, even if it says the same.
    """

    revision: int
    outcome: str | None
    counts: ev.SubOperationCounts | None


class TimelineEntry(Model):
    """One thing that happened to a move, for `dimsebus moves show`."""

    at: dt.datetime
    event_id: UUID
    what: str


class MoveState(Model):
    """Everything the log says about one C-MOVE."""

    source: str
    move_id: UUID
    requestor_ae_title: str | None = None
    # The AE title the C-MOVE-RQ called: the node's own, the source of the sub-operations
    # (a Move SCU move's source is its ``archive``).
    called_ae_title: str | None = None
    destination_ae_title: str | None = None
    association_id: UUID | None = None
    message_id: int | None = None
    query_level: str | None = None
    keys: dict[str, str] = Field(default_factory=dict)
    expected: int | None = None
    final_status: int | None = None
    final_category: str | None = None
    reported_failed: tuple[str, ...] = ()
    instances: dict[str, InstanceOutcome] = Field(default_factory=dict)
    retries: dict[str, RetryMark] = Field(default_factory=dict)
    seen: frozenset[UUID] = frozenset()
    started_at: dt.datetime | None = None
    last_event_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    timeline: tuple[TimelineEntry, ...] = ()
    responses: dict[str, int] = Field(default_factory=dict)
    unnamed: int = 0
    # A Move SCU move (``pulls``): the archive asked, and the study (what a re-issued
    # C-MOVE names). To another destination (``counted_only``) a final C-MOVE-RSP that
    # names no instances (STUDY, SERIES level) counts the sub-operations that completed,
    # gave a warning or failed unlisted, but names none.
    pulled: bool = False
    archive: ev.RemoteAE | None = None
    study_instance_uid: str | None = None
    counted_only: bool = False
    counted_completed: int = 0
    counted_warning: int = 0
    counted_failed: int = 0
    # Set by the tracker's shell, not by ``apply``: whether a retrier decides about this
    # node's failures (the tracker's ``retries`` setting), and the last finished it derived.
    retries_on: bool = False
    finished: FinishMark | None = None

    @property
    def node_id(self) -> str:
        """The node's id, from its source URI."""
        return self.source.rsplit("/", 1)[-1]


def with_outcomes(move: MoveState, outcomes: list[InstanceOutcome]) -> MoveState:
    """``move`` with each outcome that outranks the instance's current one."""
    newer = {
        o.sop_instance_uid: o
        for o in outcomes
        if (current := move.instances.get(o.sop_instance_uid)) is None or o.rank > current.rank
    }
    return move.model_copy(update={"instances": {**move.instances, **newer}}) if newer else move
