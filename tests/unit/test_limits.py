"""The contract's caps: every string, list and map is bounded, and the biggest event fits a body."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import every_event, sequential_ids
from dimsebus.schemas.export import event_schema
from dimsebus.schemas.limits import MAX_BODY_BYTES, MAX_UIDS, chunked, clip
from dimsebus.services.bus.codec import decode_body
from dimsebus.services.errors import InvalidEvent
from tests.strategies import DATA, envelopes

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
MODELS = list(ev.TYPES.values())


def example(model: type[CloudEvent]) -> dict[str, Any]:
    """The richest example of ``model`` (its lists most likely not empty), as JSON data."""
    events = every_event(node_id="n1", start=T0, ids=sequential_ids())
    found = [e.model_dump_json() for e in events if type(e) is model]
    assert found, f"dimsebus.schemas.examples has no {model.__name__}"
    return dict(json.loads(max(found, key=len)))


# -- every field has a cap ----------------------------------------------------------------


def uncapped(schema: dict[str, Any], root: dict[str, Any], path: str = "") -> list[str]:
    """Paths of strings without maxLength, lists without maxItems, maps without maxProperties."""
    if "$ref" in schema:
        return uncapped(root["$defs"][schema["$ref"].split("/")[-1]], root, path)
    found = [p for branch in schema.get("anyOf", []) for p in uncapped(branch, root, path)]
    kind = schema.get("type")
    if kind == "string" and not {"maxLength", "const", "enum", "format"} & schema.keys():
        found.append(path)
    if kind == "array":
        found += [] if "maxItems" in schema else [path]
        found += uncapped(schema.get("items", {}), root, path + "[]")
    if kind == "object" and "properties" not in schema:
        found += [] if "maxProperties" in schema else [path]
        values = [*schema.get("patternProperties", {}).values(), schema.get("additionalProperties")]
        for value in values:
            found += uncapped(value, root, path + ".*") if isinstance(value, dict) else []
    for name, prop in schema.get("properties", {}).items():
        found += uncapped(prop, root, f"{path}.{name}".lstrip("."))
    return found


@pytest.mark.parametrize("model", MODELS, ids=list(ev.TYPES))
def test_every_string_list_and_map_of_the_contract_has_a_cap(model: type[CloudEvent]) -> None:
    schema = event_schema(model)
    assert uncapped(schema, schema) == []


# -- the biggest event fits in a body ---------------------------------------------------------


def maximal(schema: dict[str, Any], value: Any, root: dict[str, Any]) -> Any:
    """``value`` with every capped string, list and map of ``schema`` grown to its cap."""
    if "$ref" in schema:
        return maximal(root["$defs"][schema["$ref"].split("/")[-1]], value, root)
    if "anyOf" in schema:
        strings = [b for b in schema["anyOf"] if b.get("type") == "string" and "maxLength" in b]
        if value is None:  # an absent text is filled; an absent object stays absent
            return maximal(strings[0], "", root) if strings else None
        typed = [b for b in schema["anyOf"] if b.get("type") != "null"]
        return maximal(typed[0], value, root)
    if "const" in schema or "enum" in schema:
        return value
    kind = schema.get("type")
    if kind == "string":
        return longest(schema, value)
    if kind == "array":
        items = [maximal(schema["items"], item, root) for item in value]
        if not items:
            assert schema["items"].get("type") == "string", "an example with items is needed"
            items = [longest(schema["items"], "")]
        return items + [items[0]] * (schema.get("maxItems", len(items)) - len(items))
    if kind == "object" and "properties" in schema:
        return {
            name: item if name == "dataschema" else maximal(schema["properties"][name], item, root)
            for name, item in value.items()
        }
    if kind == "object":
        pattern, values = next(iter(schema.get("patternProperties", {}).items()), (".*", None))
        values = values or schema["additionalProperties"]
        width = schema.get("propertyNames", {}).get("maxLength", 256)
        names = [longest({"maxLength": width, "pattern": pattern}, f"{n:04d}") for n in range(64)]
        return {name: longest(values, "") for name in names[: schema["maxProperties"]]}
    return value


def longest(schema: dict[str, Any], value: str) -> str:
    """``value`` grown to ``schema``'s maxLength, still matching its pattern."""
    width = schema.get("maxLength")
    if width is None:
        return value
    pattern = schema.get("pattern", "")
    for size in range(width, 0, -1):
        for grown in (
            value.rjust(size, "k") if value.isdigit() else value,  # a map's numbered names
            value + (value[-1:] or "x") * (size - len(value)),
            *(fill * size for fill in "x1A"),
        ):
            if len(grown) == size and re.search(pattern, grown):
                return grown
    raise AssertionError(f"no string of at most {width} characters matches {pattern!r}")


@pytest.mark.parametrize("model", MODELS, ids=list(ev.TYPES))
def test_an_event_with_every_field_at_its_cap_fits_in_a_body(model: type[CloudEvent]) -> None:
    # given an event of the type with every string, list and map at its cap (in ASCII)
    schema = event_schema(model)
    biggest = maximal(schema, example(model), schema)
    # then it is a valid event
    event = decode_body(json.dumps(biggest).encode(), max_bytes=10 * MAX_BODY_BYTES)
    # and what a publisher sends of it fits in the body every consumer accepts
    size = len(event.model_dump_json().encode())
    assert size <= MAX_BODY_BYTES, f"{model.__name__} at its caps is {size} bytes"


# -- one over a cap is refused, naming the field ------------------------------------------------


def _set(body: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        body = body[part]
    body[last] = value


UID = "1.2.840.113619.2.55.3.604688119.868.1234567890.123"
OVER_THE_CAPS = [
    (ev.CStoreResponseReceived, "subject", "1" * 257),
    (ev.CStoreResponseReceived, "source", "dimsebus://node/" + "n" * 241),
    (ev.CStoreResponseReceived, "data.labels", {f"k{n}": "v" for n in range(65)}),
    (ev.CStoreResponseReceived, "data.labels", {"k": "v" * 257}),
    (ev.CStoreResponseReceived, "data.error_comment", "e" * 1025),
    (ev.CStoreUnsent, "data.sop_instance_uids", [UID] * (MAX_UIDS + 1)),
    (ev.MoveRequested, "data.keys", {f"Key{n}": "v" for n in range(65)}),
    (ev.MoveRequested, "data.keys", {"PatientName": "v" * 1025}),
    (ev.MoveCompleted, "data.failed_sop_instance_uids", [UID] * (MAX_UIDS + 1)),
    (ev.AssociationAborted, "data.reason", "r" * 1025),
    (ev.AssociationRejected, "data.reason_text", "r" * 1025),
    (ev.MessageInvalid, "data.fields", {f"F{n}": "v" for n in range(65)}),
    (ev.MoveFinished, "data.node_id", "n" * 257),
    (ev.RetryScheduled, "data.reason", "r" * 2049),
    (ev.ResendSubOperations, "data.sop_instance_uids", [UID] * (MAX_UIDS + 1)),
]


@pytest.mark.parametrize(
    ("model", "path", "value"),
    OVER_THE_CAPS,
    ids=[f"{m.__name__}.{p}" for m, p, _ in OVER_THE_CAPS],
)
def test_one_over_a_cap_is_refused_naming_the_field(
    model: type[CloudEvent], path: str, value: Any
) -> None:
    # given a valid event with one value over its cap
    body = example(model)
    _set(body, path, value)
    # then the consumer's decoder refuses it, naming where
    with pytest.raises(InvalidEvent, match=re.escape(path)):
        decode_body(json.dumps(body).encode())


def test_a_body_over_the_limit_is_refused_before_it_is_parsed() -> None:
    # given a body one byte over the limit (not even JSON)
    body = b"{" * (MAX_BODY_BYTES + 1)
    # then the error is its size, not its syntax
    with pytest.raises(InvalidEvent, match=r"body: 262145 bytes is over the limit of 262144"):
        decode_body(body)
    # and a limit can be raised by the consumer's setting
    with pytest.raises(InvalidEvent, match="Invalid JSON"):
        decode_body(body, max_bytes=2 * MAX_BODY_BYTES)


def test_an_event_under_another_routing_key_is_refused() -> None:
    # given a tracker's event, published under a key a node user may publish to
    forged = next(
        e
        for e in every_event(node_id="n1", start=T0, ids=sequential_ids())
        if isinstance(e, ev.MoveFinished)
    )
    body = forged.model_dump_json().encode()
    # then a consumer that knows the routing key refuses it, naming both
    with pytest.raises(InvalidEvent, match=r"dicom.cstore.response.received.success.*finished"):
        decode_body(body, routing_key="dicom.cstore.response.received.success")
    assert decode_body(body, routing_key=forged.routing_key) == forged


@pytest.mark.parametrize("model", list(DATA), ids=[m.__name__ for m in DATA])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_the_strategies_make_events_a_consumer_accepts(
    model: type[CloudEvent], data: st.DataObject
) -> None:
    event = data.draw(envelopes(model))
    assert decode_body(event.model_dump_json().encode(), event.routing_key) == event


def test_chunks_and_clips() -> None:
    assert [len(c) for c in chunked(list(range(5000)))] == [2048, 2048, 904]
    assert chunked([]) == []
    assert clip("x" * 1024) == "x" * 1024
    assert clip("x" * 2000, 10) == "xxxxxxx..."
