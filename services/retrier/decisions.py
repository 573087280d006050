"""Pure: a decision about a failure, as the record, the command and the event that carry it.

The store (``dimsebus.services.retrier.store``) keeps these records; nothing here reads or
writes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal
from uuid import NAMESPACE_URL, UUID, uuid5

from dimsebus.schemas import events as ev
from dimsebus.services.retrier.policy import Decision, Failure, Retry

State = Literal["scheduled", "parked", "requeued"]


@dataclass(frozen=True, slots=True)
class RetryItem:
    """One decision: the failed sub-operations, and the resend command that retries them."""

    id: UUID
    state: State
    published: bool
    failed_attempt: int
    status: int | None
    reason: str
    retry_at: dt.datetime | None
    step_ms: int | None
    decided_at: dt.datetime
    command: ev.ResendSubOperations

    @property
    def data(self) -> ev.ResendData:
        """What the command asks the node to do."""
        return self.command.data


def record(
    failure: Failure, decision: Decision, item_id: UUID, source: str, now: dt.datetime
) -> RetryItem:
    """The stored decision, with the resend command that retries (or would retry) it."""
    retrying = isinstance(decision, Retry)
    command = resend_command(
        failure,
        item_id,
        source,
        now,
        attempt=decision.attempt if isinstance(decision, Retry) else failure.attempt + 1,
    )
    return RetryItem(
        id=item_id,
        state="scheduled" if retrying else "parked",
        published=False,
        failed_attempt=failure.attempt,
        status=failure.status,
        reason=failure.reason if isinstance(decision, Retry) else decision.reason,
        retry_at=decision.at if isinstance(decision, Retry) else None,
        step_ms=round(decision.step * 1000) if isinstance(decision, Retry) else None,
        decided_at=now,
        command=command,
    )


def resend_command(
    failure: Failure, command_id: UUID, source: str, now: dt.datetime, attempt: int
) -> ev.ResendSubOperations:
    """Command the node that served the operation to send its failed instances again."""
    return ev.ResendSubOperations.model_validate(
        {
            "id": command_id,
            "source": source,
            "time": now,
            "subject": str(failure.operation.id),
            "data": ev.ResendData(
                operation=failure.operation,
                node_id=failure.node_id,
                sop_instance_uids=failure.sop_instance_uids,
                destination_ae_title=failure.destination_ae_title,
                move_originator=failure.move_originator,
                attempt=attempt,
                labels=failure.labels,
                source=failure.archive,
                study_instance_uid=failure.study_instance_uid if failure.archive else None,
            ),
        }
    )


def decision_event(item: RetryItem, source: str) -> ev.RetryScheduled | ev.RetryExhausted:
    """``dimsebus.retry.scheduled`` or ``.exhausted``; its id follows from the decision's."""
    data = item.data
    scheduled = item.state == "scheduled"
    model = ev.RetryScheduled if scheduled else ev.RetryExhausted
    return model.model_validate(
        {
            "id": uuid5(NAMESPACE_URL, f"dimsebus:retry-event:{item.id}"),
            "source": source,
            "time": item.decided_at,
            "subject": str(data.operation.id),
            "data": ev.RetryData(
                operation=data.operation,
                node_id=data.node_id,
                sop_instance_uids=data.sop_instance_uids,
                attempt=data.attempt if scheduled else item.failed_attempt,
                reason=item.reason,
                retry_at=item.retry_at,
                status=item.status,
                destination_ae_title=data.destination_ae_title,
            ),
        }
    )


def requeued(item: RetryItem, source: str, now: dt.datetime) -> ev.ResendSubOperations:
    """An operator's immediate retry of a parked decision: the same command, a new id."""
    command = item.command
    return command.model_copy(
        update={
            "id": uuid5(NAMESPACE_URL, f"dimsebus:requeue:{item.id}"),
            "source": source,
            "time": now,
        }
    )
