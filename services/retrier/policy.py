"""The retry policy: which failed sub-operations get another attempt, and when.

``failure_of`` reads one of the node's failure events; ``decide`` turns a
failure and the attempt that failed into ``Retry`` (at a time) or ``GiveUp``
(with a reason). Transient against permanent comes from the status table in
``dimsebus.schemas.status``; the delays follow dcm4chee's queue settings (initial
delay, multiplier, maximum, jitter). Time and randomness come in as
arguments, so every decision is reproducible in tests.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal
from uuid import NAMESPACE_URL, UUID, uuid5

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dimsebus.schemas import events as ev
from dimsebus.schemas.status import Service, describe_status

FailureCategory = Literal["failure", "warning", "missing", "unsent"]

# Missing responses that a new association can fix: the peer or the network went away.
TRANSIENT_MISSING: frozenset[str] = frozenset(
    {"aborted", "dimse_timeout", "connection_lost", "released", "invalid_response"}
)
TRANSIENT_UNSENT: frozenset[str] = frozenset(
    {"unreachable", "rejected_transient", "association_lost", "node_stopped"}
)


class RetryPolicy(BaseModel):
    """How often and how fast to retry, like a dcm4chee queue's retry settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(5, ge=1, description="attempts in all, the first one included")
    initial_delay: float = Field(30.0, gt=0, description="seconds before the second attempt")
    multiplier: float = Field(2.0, ge=1.0, description="each further delay is this much longer")
    max_delay: float = Field(3600.0, gt=0, description="seconds; no delay grows past this")
    jitter: float = Field(0.1, ge=0.0, lt=1.0, description="delays vary by up to this fraction")
    retry_on_warning: bool = Field(False, description="re-send instances stored with a warning")

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryPolicy:
        if self.max_delay < self.initial_delay:
            raise ValueError(
                f"max_delay ({self.max_delay} s) is shorter than initial_delay "
                f"({self.initial_delay} s)"
            )
        return self


@dataclass(frozen=True, slots=True)
class Failure:
    """Sub-operations that did not succeed, as one of the node's events reports them."""

    event_id: UUID
    node_id: str
    operation: ev.Operation
    sop_instance_uids: tuple[str, ...]
    destination_ae_title: str
    move_originator: ev.MoveOriginator | None
    labels: dict[str, str]
    attempt: int
    category: FailureCategory
    status: int | None
    transient: bool
    reason: str
    archive: ev.RemoteAE | None = None
    study_instance_uid: str | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Send again as ``attempt`` at ``at``; ``step`` is the un-jittered delay in seconds."""

    attempt: int
    at: dt.datetime
    step: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No more attempts, and why."""

    reason: str


Decision = Retry | GiveUp


def failure_of(event: ev.Event, policy: RetryPolicy) -> Failure | None:
    """The failure an event reports, or None when it reports none worth a decision."""
    match event:
        case ev.CStoreResponseReceived():
            return _received(event, policy)
        case ev.CStoreResponseMissing():
            data = event.data
            return _failure(
                event,
                data,
                (data.affected_sop_instance_uid,),
                data.association.peer_ae_title,
                category="missing",
                status=None,
                transient=data.reason in TRANSIENT_MISSING,
                reason=f"no response: {data.reason} ({data.detail})",
            )
        case ev.CStoreUnsent():
            unsent = event.data
            return _failure(
                event,
                unsent,
                unsent.sop_instance_uids,
                unsent.destination_ae_title,
                category="unsent",
                status=None,
                transient=unsent.reason in TRANSIENT_UNSENT,
                reason=f"not sent: {unsent.reason} ({unsent.detail})",
                archive=unsent.source,
                study_instance_uid=unsent.study_instance_uid,
            )
        case ev.MoveResponseReceived():
            return _pulled(event)
    return None


def _pulled(event: ev.MoveResponseReceived) -> Failure | None:
    """The instances a final C-MOVE-RSP of the node's own C-MOVE (Move SCU) says failed.

    The listed ones, and of a C-MOVE that named its instances those its counts leave
    unaccounted for (``MoveResponseData.instance_outcomes``). A retry re-issues the
    C-MOVE for them at IMAGE level. A move refused as a whole (0xA801 destination
    unknown to the archive, 0xA900, 0xCxxx) cannot succeed again; a response that
    names no archive (an event older than ``source``) cannot be re-issued: both are
    given up, so that the tracker learns the decision.
    """
    data = event.data
    if not data.final or data.status_category == "cancel":
        return None
    named = data.instance_outcomes()
    listed = set(data.failed_sop_instance_uids)
    # Of a C-MOVE that named its instances, only those: at most as many as it asked for.
    failed = {uid for uid, what in named.items() if what == "failure"} if named else listed
    uids = tuple(sorted(failed))
    if not uids:
        return None
    info = describe_status(data.status, Service.QUERY_RETRIEVE)
    refused = data.status_category == "failure" and not info.retryable
    # Nothing listed and nothing counted failed: the instances were not matched at all.
    unmatched = not listed and data.counts.failed == 0
    archive = data.association.peer_ae_title
    reason = f"C-MOVE from {archive}: final C-MOVE-RSP {info.label} {info.description}"
    if unmatched:
        reason += f" ({len(uids)} of the instances asked for not matched at the archive)"
    if data.source is None or data.study_instance_uid is None:
        reason += " (the event names no archive to ask again)"
    return Failure(
        event_id=event.id,
        node_id=event.source.rsplit("/", 1)[-1],
        operation=data.operation,
        sop_instance_uids=uids,
        destination_ae_title=data.move_destination,
        move_originator=None,  # the node is the originator; a new C-MOVE has its own ids
        labels=dict(data.labels),
        attempt=data.attempt,
        category="failure",
        status=data.status,
        transient=not (
            refused or unmatched or data.source is None or data.study_instance_uid is None
        ),
        reason=reason + (f": {data.error_comment}" if data.error_comment else ""),
        archive=data.source,
        study_instance_uid=data.study_instance_uid,
    )


def _received(event: ev.CStoreResponseReceived, policy: RetryPolicy) -> Failure | None:
    data = event.data
    info = describe_status(data.status, Service.STORAGE)
    if data.status_category == "warning":
        if not policy.retry_on_warning:
            return None
        transient = True
    elif data.status_category == "failure":
        transient = info.retryable
    else:
        return None
    return _failure(
        event,
        data,
        (data.affected_sop_instance_uid,),
        data.association.peer_ae_title,
        category=data.status_category,
        status=data.status,
        transient=transient,
        reason=f"{info.label} {info.description}"
        + (f": {data.error_comment}" if data.error_comment else ""),
    )


def _failure(
    event: ev.CStoreResponseReceived | ev.CStoreResponseMissing | ev.CStoreUnsent,
    data: ev.CStoreRequestFacts | ev.CStoreUnsentData,
    uids: tuple[str, ...],
    destination: str,
    *,
    category: FailureCategory,
    status: int | None,
    transient: bool,
    reason: str,
    archive: ev.RemoteAE | None = None,
    study_instance_uid: str | None = None,
) -> Failure:
    return Failure(
        event_id=event.id,
        node_id=event.source.rsplit("/", 1)[-1],
        operation=data.operation,
        sop_instance_uids=uids,
        destination_ae_title=destination,
        move_originator=data.move_originator,
        labels=dict(data.labels),
        attempt=data.attempt,
        category=category,
        status=status,
        transient=transient,
        reason=reason,
        archive=archive,
        study_instance_uid=study_instance_uid,
    )


def delay_step(attempt: int, policy: RetryPolicy) -> float:
    """Seconds between the failed ``attempt`` and the next one, before jitter."""
    return float(min(policy.initial_delay * policy.multiplier ** (attempt - 1), policy.max_delay))


def decide(
    failure: Failure, attempt: int, policy: RetryPolicy, now: dt.datetime, draw: float = 0.5
) -> Decision:
    """Retry at a time, or give up with the reason.

    ``attempt`` is the attempt that failed (1 for the first try); ``draw`` is a
    number in [0, 1) that places the jitter (0.5 means none).
    """
    if failure.operation.kind == "get":
        return GiveUp(
            "C-GET sub-operations go back on the requestor's own association; "
            "only the requestor can retry them"
        )
    if not failure.transient:
        return GiveUp(f"permanent failure, not retried: {failure.reason}")
    if attempt >= policy.max_attempts:
        return GiveUp(f"{attempt} of {policy.max_attempts} attempts failed; last: {failure.reason}")
    step = delay_step(attempt, policy)
    delay = step * (1 + policy.jitter * (2 * draw - 1))
    return Retry(attempt + 1, now + dt.timedelta(seconds=delay), step)


def decision_id(failure: Failure) -> UUID:
    """One id per (operation, instances, failed attempt): a redelivery decides nothing new."""
    uids = ",".join(sorted(failure.sop_instance_uids))
    return uuid5(NAMESPACE_URL, f"dimsebus:retry:{failure.operation.id}:{failure.attempt}:{uids}")
