"""What the audit store reads when an association ends and at each response: bounded work.

An SQLite file in a temporary folder, as the audit service keeps it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.audit.store import FIRST_OF, AuditStore

T0 = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)


def test_an_associations_events_are_read_in_batches_in_chain_order(tmp_path: Path) -> None:
    # given the trail of a move of 120 instances
    store = AuditStore.open(str(tmp_path / "audit.sqlite"))
    story = move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=120)
    store.append(story)
    responses = [e for e in story if isinstance(e, ev.CStoreResponseReceived)]
    association = str(responses[0].data.association.id)
    # when its sub-association's events are read 25 at a time
    read = [body["id"] for body in store.association_events(association, batch=25)]
    # then they are every event of that association, in the order they were recorded
    expected = [r.event_id for r in store.records() if r.association_id == association]
    assert read == expected
    assert {str(e.id) for e in responses} <= set(read)
    store.close()


def test_the_first_response_of_a_study_is_looked_up_by_association_not_by_study(
    tmp_path: Path,
) -> None:
    # given a trail with records, whose study is the same on every association
    store = AuditStore.open(str(tmp_path / "audit.sqlite"))
    store.append(move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=5))
    # then SQLite plans the lookup on the association's index: a study moved again and
    # again would make it read every record of the study for each response
    plan = " ".join(
        str(row[-1]) for row in store.db.execute("EXPLAIN QUERY PLAN " + FIRST_OF, ("a", "s"))
    )
    assert "audit_by_association" in plan
    assert "audit_by_study" not in plan
    store.close()
