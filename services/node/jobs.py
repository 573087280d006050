"""What the capture knows about the node's work: jobs, retrievals, associations (state only)."""

from __future__ import annotations

import datetime as dt
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.node.storepair import Outstanding, Recorder
from dimsebus.services.node.unsolicited import Unsolicited


@dataclass
class Job:
    """What the node is doing on an association: the operation its C-STOREs belong to."""

    operation: ev.Operation
    move_originator: ev.MoveOriginator | None = None
    labels: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    subjects: dict[str, Subject] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Subject:
    """The study of an instance, and its Patient ID as the PHI policy lets it leave."""

    study_instance_uid: str | None
    patient_id: str | None


@dataclass
class Retrieval:
    """A C-MOVE or C-GET the node is serving, until its final response.

    For a C-MOVE, ``uids`` are the instances it matched: those the final
    response reports failed without a C-STORE-RQ ever sent are reported as
    ``dicom.cstore.unsent``, so that they can be retried one by one.
    """

    model: type[CloudEvent]
    data: dict[str, Any]
    uids: tuple[str, ...] = ()
    destination_known: bool = True
    originator: ev.MoveOriginator | None = None


@dataclass
class SubAssociations:
    """What the sub-associations of one C-MOVE did: instances requested, a rejection."""

    sent: set[str] = field(default_factory=set)
    rejection: str | None = None


@dataclass
class AssociationState:
    """What the capture knows about one association."""

    ref: ev.AssociationRef
    job: Job | None
    pending: dict[int, Outstanding] = field(default_factory=dict)  # by message id
    retrievals: dict[int, Retrieval] = field(default_factory=dict)
    substitutes_reported: bool = False
    recorder: Recorder = field(default_factory=Recorder)
    transfer_syntaxes: dict[int, str] = field(default_factory=dict)  # by presentation context
    # Once the association ended (released, aborted, closed): why, so that a C-STORE-RQ
    # pynetdicom still reports sent after that is missing at once, not pending forever.
    ended: tuple[str | None, str, str | None] | None = None
    # C-STORE-RQs sent and C-STORE-RSPs arrived (pynetdicom's event, time), until they
    # are recorded and spooled, and whether a thread waits in get_msg for a message.
    sent: deque[tuple[Any, dt.datetime]] = field(default_factory=deque)
    arrived: deque[tuple[Any, dt.datetime]] = field(default_factory=deque)
    awaited: bool = False
    # Held while the sent and arrived are caught up on (whichever pynetdicom thread does
    # it): it guards ``pending`` and ``ended``, and keeps requests and responses in order.
    lock: threading.Lock = field(default_factory=threading.Lock)
    # C-STORE-RSPs that answered no outstanding request: one event for all, at the end.
    unsolicited: Unsolicited = field(default_factory=Unsolicited)
    unsolicited_reported: bool = False
