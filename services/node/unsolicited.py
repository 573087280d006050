"""Pure: how many C-STORE-RSPs that answer nothing an association may send, and their event.

A C-STORE-RSP answers the C-STORE-RQ whose Message ID it carries in Message ID
Being Responded To (PS3.7 9.3.1.2); one that answers no request outstanding on
its association (a second answer, an answer to nothing) is a protocol error.
Each used to become its own ``dicom.message.invalid``, carrying the peer's text
into the event stream and the audit chain: 200 of them, 200 events. Now an
association's unsolicited responses are counted, the association is aborted
once they reach ``UNSOLICITED_LIMIT``, and they become one event with their
count when it ends (``Capture.on_conn_close``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.node.salvage import InvalidFacts, invalid_facts, invalid_of

if TYPE_CHECKING:
    from dimsebus.services.node.capture import Stamp, StoreResponse

UNSOLICITED_LIMIT = 3
"""Unsolicited C-STORE-RSPs after which the node aborts the association (A-ABORT).

One can be a slip of an honest peer (a response sent twice); a few in a row are
not, and a peer that keeps sending them is broken or hostile. Three keeps a
one-off slip harmless (recorded, the association goes on) while a flood costs
one event and one abort, not one event per response.
"""


@dataclass(frozen=True, slots=True)
class Unsolicited:
    """The unsolicited C-STORE-RSPs of one association so far: how many, and the first."""

    count: int = 0
    first: StoreResponse | None = None

    def noted(self, response: StoreResponse) -> Unsolicited:
        """This tally with one more unsolicited ``response``."""
        return dataclasses.replace(self, count=self.count + 1, first=self.first or response)

    @property
    def exhausted(self) -> bool:
        """Whether the association has used up its budget: it is to be aborted."""
        return self.count >= UNSOLICITED_LIMIT

    @property
    def just_exhausted(self) -> bool:
        """Whether the response just noted used up the budget: abort now, once."""
        return self.count == UNSOLICITED_LIMIT


def unsolicited_facts(tally: Unsolicited, association_id: UUID) -> InvalidFacts | None:
    """The facts of the one ``dicom.message.invalid`` for an association's unsolicited responses.

    Its fields are the first response's; ``count`` says how many there were. None if
    there were none.
    """
    first = tally.first
    if first is None:
        return None
    outcome = (
        f"the node aborted the association after {UNSOLICITED_LIMIT}"
        if tally.exhausted
        else "the association went on"
    )
    return invalid_facts(
        "C-STORE-RSP",
        f"{tally.count} C-STORE-RSP(s) answered no C-STORE-RQ outstanding on this "
        f"association; {outcome}; the fields are the first one's",
        association_id=association_id,
        message_id=first.message_id,
        sop_instance_uid=first.affected_sop_instance_uid,
        fields=first.command,
        count=tally.count,
    )


def unsolicited_event(tally: Unsolicited, association_id: UUID, stamp: Stamp) -> CloudEvent | None:
    """The one ``dicom.message.invalid`` for an association's unsolicited responses, if any."""
    facts = unsolicited_facts(tally, association_id)
    return invalid_of(facts, stamp) if facts is not None else None
