"""Events to AMQP messages and back (structured CloudEvents, DESIGN.md 'Message format')."""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

import aio_pika
from pamqp import commands as spec
from pydantic import ValidationError

from dimsebus.schemas.envelope import CONTENT_TYPE, CloudEvent
from dimsebus.schemas.events import Event, parse_event
from dimsebus.schemas.limits import MAX_BODY_BYTES
from dimsebus.schemas.native import error_message
from dimsebus.services.bus.batch import Outgoing
from dimsebus.services.errors import InvalidEvent


def to_message(event: CloudEvent) -> aio_pika.Message:
    """A persistent AMQP message whose properties mirror the envelope."""
    return build_message(
        event.model_dump_json().encode(), event.id, event.type, event.time, event.correlation_id
    )


def build_message(
    body: bytes,
    event_id: UUID | str,
    event_type: str,
    time: dt.datetime,
    correlation_id: str | None,
) -> aio_pika.Message:
    """The AMQP message for an already encoded event (DESIGN.md 'Message format')."""
    return aio_pika.Message(body, type=event_type, **_properties(event_id, time, correlation_id))


def outgoing(
    body: bytes,
    event_id: UUID | str,
    event_type: str,
    time: dt.datetime,
    correlation_id: str | None,
    routing_key: str,
) -> Outgoing:
    """``build_message``'s message for ``publish_batch``: the same properties, ready to write."""
    properties = spec.Basic.Properties(
        message_type=event_type,
        priority=0,  # aio-pika's defaults: the same bytes on the wire as build_message's
        headers={},
        **_properties(event_id, time, correlation_id),
    )
    return Outgoing(body, properties, routing_key)


def _properties(
    event_id: UUID | str, time: dt.datetime, correlation_id: str | None
) -> dict[str, Any]:
    """The properties that mirror the envelope, named alike by aio-pika and pamqp."""
    return {
        "content_type": CONTENT_TYPE,
        "message_id": str(event_id),
        "timestamp": time,
        "correlation_id": correlation_id,
        "delivery_mode": aio_pika.DeliveryMode.PERSISTENT,
    }


def outgoing_event(event: CloudEvent) -> Outgoing:
    """``to_message`` for ``publish_batch``."""
    return outgoing(
        event.model_dump_json().encode(),
        event.id,
        event.type,
        event.time,
        event.correlation_id,
        event.routing_key,
    )


def decode_body(
    body: bytes, routing_key: str | None = None, max_bytes: int = MAX_BODY_BYTES
) -> Event:
    """Validate a message body, or raise ``InvalidEvent`` naming every bad field.

    A body over ``max_bytes`` is refused before it is parsed. With ``routing_key``,
    the event must be the one its routing key names: the broker authorises
    publishers by routing key (topic permissions), so a body of another type under
    a key its publisher may use is a forgery, not an event.
    """
    if len(body) > max_bytes:
        raise InvalidEvent(
            f"body: {len(body)} bytes is over the limit of {max_bytes} (max_body_bytes)"
        )
    try:
        event = parse_event(body)
    except ValidationError as exc:
        raise InvalidEvent(describe_validation_error(exc)) from exc
    if routing_key is not None and routing_key != event.routing_key:
        raise InvalidEvent(
            f"routing key {routing_key[:200]!r} is not the event's own, {event.routing_key!r} "
            f"(type {event.type!r})"
        )
    return event


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """One line per problem, each naming the field path and the bad value."""
    lines = []
    for error in exc.errors(include_url=False)[:limit]:
        where = ".".join(str(part) for part in error["loc"]) or "body"
        value = repr(error.get("input"))
        shown = value if len(value) <= 80 else value[:77] + "..."
        lines.append(f"{where}: {error_message(error)} (got {shown})")
    if exc.error_count() > limit:
        lines.append(f"... and {exc.error_count() - limit} more")
    return "; ".join(lines)
