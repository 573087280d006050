"""A batch's bytes on the wire (``batch.marshal_publishes``) are exactly what pamqp writes."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import aiormq
import pytest
from aiormq.abc import ChannelFrame
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.header import ContentHeader

from dimsebus.services.bus.batch import Outgoing, marshal_publishes
from dimsebus.services.bus.codec import outgoing


def pamqp_bytes(channel: int, exchange: str, messages: list[Outgoing], max_content: int) -> bytes:
    """What ``publish_batch`` wrote before: pamqp's frames, bodies split as aiormq splits."""
    splitter = SimpleNamespace(max_content_size=max_content)
    frames: list[object] = []
    for message in messages:
        frames += (
            spec.Basic.Publish(exchange=exchange, routing_key=message.routing_key, mandatory=True),
            ContentHeader(properties=message.properties, body_size=len(message.body)),
            *aiormq.Channel._split_body(splitter, message.body),  # type: ignore[arg-type]
        )
    return ChannelFrame.marshall(channel, frames).payload  # type: ignore[arg-type]


texts = st.text(max_size=80)
exchanges = st.text("abcXYZ019-_.:", max_size=127)
stamps = st.datetimes(
    min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC)
)
messages = st.builds(
    outgoing,
    body=st.binary(max_size=3000),
    event_id=st.uuids().map(str),
    event_type=texts,
    time=stamps,
    correlation_id=st.none() | texts,
    routing_key=texts,
)


@given(
    channel=st.integers(1, 2047),
    exchange=exchanges,
    batch=st.lists(messages, max_size=5),
    max_content=st.integers(1, 4096),
)
def test_the_same_bytes_as_pamqp(
    channel: int, exchange: str, batch: list[Outgoing], max_content: int
) -> None:
    assert marshal_publishes(channel, exchange, batch, max_content) == pamqp_bytes(
        channel, exchange, batch, max_content
    )


@given(
    properties=st.builds(
        spec.Basic.Properties,
        content_type=st.none() | texts,
        content_encoding=st.none() | texts,
        headers=st.none() | st.dictionaries(st.text(max_size=10), st.integers(0, 1000), max_size=3),
        delivery_mode=st.none() | st.sampled_from([1, 2]),
        priority=st.none() | st.integers(0, 9),
        correlation_id=st.none() | texts,
        reply_to=st.none() | texts,
        expiration=st.none() | st.integers(0, 10**6).map(str),
        message_id=st.none() | texts,
        timestamp=st.none() | stamps,
        message_type=st.none() | texts,
        user_id=st.none() | texts,
        app_id=st.none() | texts,
    ),
    body=st.binary(max_size=100),
)
def test_every_property_as_pamqp_writes_it(properties: spec.Basic.Properties, body: bytes) -> None:
    batch = [Outgoing(body, properties, "dimsebus.x")]
    assert marshal_publishes(1, "dimsebus.events", batch, 131064) == pamqp_bytes(
        1, "dimsebus.events", batch, 131064
    )


def test_an_exchange_name_amqp_does_not_allow_is_refused_as_pamqp_refuses_it() -> None:
    message = outgoing(b"{}", "id", "t", dt.datetime.now(dt.UTC), None, "k")
    with pytest.raises(ValueError, match="exchange"):  # longer than 127
        marshal_publishes(1, "dimsebus.events" * 9, [message], 131064)


def test_a_name_too_long_for_amqp_is_refused_as_pamqp_refuses_it() -> None:
    message = outgoing(b"{}", "id", "t", dt.datetime.now(dt.UTC), None, "k" * 256)
    with pytest.raises(TypeError, match="255"):
        marshal_publishes(1, "dimsebus.events", [message], 131064)
