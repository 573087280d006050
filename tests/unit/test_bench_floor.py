"""The capture floor of ``bench.cstore``: its records must be events the relay can make."""

from __future__ import annotations

from pathlib import Path

from bench.cstore import Floor
from dimsebus.services.bus.outbox import Outbox, OutboxRow
from dimsebus.services.node import fact_events


def test_each_floor_record_is_a_distinct_event_the_relay_makes(tmp_path: Path) -> None:
    # given the floor's records of two responses
    outbox = Outbox(tmp_path / "outbox.sqlite")
    floor = Floor("bench", outbox, commit=True)
    records = [floor.fresh_record(), floor.fresh_record()]
    # when the relay makes their events, as it does from the outbox's rows
    events = [
        fact_events.row_event(
            OutboxRow(
                seq,
                r.event_id,
                r.type,
                r.type,
                r.correlation_id,
                r.time,
                r.body,
                r.format,
            )
        )
        for seq, r in enumerate(records, 1)
    ]
    # then each is a received response under its record's own, new id
    assert [str(e.id) for e in events] == [r.event_id for r in records]
    assert len({r.event_id for r in records}) == 2
    assert all(e.type == "dicom.cstore.response.received" for e in events)
    outbox.close()
