"""Every contract model round-trips through JSON, and bad envelopes are rejected by name."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent, schema_uri
from dimsebus.schemas.examples import every_event, sequential_ids
from dimsebus.services.bus.codec import decode_body
from dimsebus.services.errors import InvalidEvent
from tests.strategies import DATA, envelopes


def test_every_model_has_a_strategy() -> None:
    assert set(DATA) == set(ev.TYPES.values())


@pytest.mark.parametrize("model", list(ev.TYPES.values()), ids=list(ev.TYPES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_through_json(model: type[CloudEvent], data: st.DataObject) -> None:
    # given any valid event of the model
    event = data.draw(envelopes(model))
    # when it is written and parsed back
    parsed = ev.parse_event(event.model_dump_json())
    # then it is the same event, of the same type
    assert type(parsed) is model
    assert parsed == event
    assert parsed.dataschema == schema_uri(event.type)


@given(event=envelopes(ev.CStoreResponseReceived))
def test_routing_key_carries_the_status_category(event: ev.CStoreResponseReceived) -> None:
    assert event.routing_key == f"dicom.cstore.response.received.{event.data.status_category}"


STORY = every_event(
    node_id="n1", start=dt.datetime(2026, 11, 26, tzinfo=dt.UTC), ids=sequential_ids()
)


def _first(model: type[CloudEvent]) -> CloudEvent:
    return next(event for event in STORY if isinstance(event, model))


def _sample() -> dict[str, object]:
    return json.loads(_first(ev.AssociationReleased).model_dump_json())  # type: ignore[no-any-return]


def test_the_example_story_has_every_type() -> None:
    assert {event.type for event in STORY} == set(ev.TYPES)


def test_unknown_type_is_rejected_with_its_name() -> None:
    body = {**_sample(), "type": "dicom.teleport.requested"}
    with pytest.raises(InvalidEvent, match=r"dicom\.teleport\.requested"):
        decode_body(json.dumps(body).encode())


def test_future_schema_version_is_rejected_with_the_version() -> None:
    body = _sample()
    body["dataschema"] = schema_uri(str(body["type"]), version=2)
    with pytest.raises(InvalidEvent, match=r"dataschema .*:v2.* is not supported"):
        decode_body(json.dumps(body).encode())


def test_unknown_field_is_rejected() -> None:
    body = _sample()
    body["data"]["colour"] = "blue"  # type: ignore[index]
    with pytest.raises(InvalidEvent, match=r"data\.colour"):
        decode_body(json.dumps(body).encode())


def test_body_that_is_not_json_names_the_problem() -> None:
    with pytest.raises(InvalidEvent, match="Invalid JSON"):
        decode_body(b"{not json")


def test_status_category_must_match_the_status() -> None:
    data = _first(ev.CStoreResponseReceived).data.model_dump()
    data.update(status=0xA700, status_category="success")
    with pytest.raises(ValueError, match=r"does not match status 0xA700, which is 'failure'"):
        ev.CStoreResponseReceivedData.model_validate(data)


def test_times_are_normalised_to_utc() -> None:
    body = _sample()
    body["time"] = "2026-11-26T10:00:00+01:00"
    event = decode_body(json.dumps(body).encode())
    assert event.time == dt.datetime(2026, 11, 26, 9, tzinfo=dt.UTC)
    assert json.loads(event.model_dump_json())["time"] == "2026-11-26T09:00:00Z"


def test_naive_time_is_rejected() -> None:
    body = {**_sample(), "time": "2026-11-26T10:00:00"}
    with pytest.raises(InvalidEvent, match="time: Input should have timezone info"):
        decode_body(json.dumps(body).encode())


def test_models_are_frozen() -> None:
    event = _first(ev.AssociationReleased)
    with pytest.raises(ValueError, match="frozen"):
        event.id = uuid.uuid4()  # type: ignore[misc]
