"""The replicas setting against queues that exist with another replica count (upgrades).

RabbitMQ refuses a redeclare whose x-initial-cluster-size or x-quorum-initial-group-size
differs from the queue's (PRECONDITION_FAILED, both ways); dimsebus declares such a queue
as it was created, warns once, and keeps the caller's channel open. On a single broker
the arguments are accepted too (a queue of one member). The replicas themselves, on three
nodes, are checked in tests/faults/test_cluster.py.
"""

from __future__ import annotations

import logging

import pytest
from aio_pika.abc import AbstractChannel

from dimsebus.services.bus.consumer import Consumer
from dimsebus.services.bus.topology import (
    StreamRetention,
    WorkQueue,
    declare_topology,
    declare_work_queue,
)
from dimsebus.services.errors import TopologyError


async def _nothing(_: object) -> None:
    return None


async def test_an_existing_log_takes_replicas_without_a_refusal(
    channel: AbstractChannel, caplog: pytest.LogCaptureFixture
) -> None:
    # given the log declared without replicas (the connection fixture did), when a service
    # configured with replicas = 3 declares it
    with caplog.at_level(logging.WARNING):
        await declare_topology(channel, replicas=3)
    # then it is declared as it was created, with one warning, and the channel still works
    assert "exists with no x-initial-cluster-size, not the 3 asked for" in caplog.text
    assert not channel.is_closed
    await declare_topology(channel)  # and without replicas, as before


async def test_a_queue_made_with_replicas_is_declared_by_a_service_without(
    channel: AbstractChannel, caplog: pytest.LogCaptureFixture
) -> None:
    queue = WorkQueue("dimsebus.test.replicas", bindings=("dicom.association.#",))
    # given a work queue created by a service with replicas = 3
    await declare_work_queue(channel, queue, replicas=3)
    # when a service without the setting (and one with another) starts consuming it
    with caplog.at_level(logging.WARNING):
        await Consumer(channel, queue, _nothing).start()
        await declare_work_queue(channel, queue, replicas=5)
    # then both take the queue as it is, and say so
    assert "exists with x-quorum-initial-group-size 3, not the broker default" in caplog.text
    assert "exists with x-quorum-initial-group-size 3, not the 5 asked for" in caplog.text
    assert not channel.is_closed


async def test_another_difference_is_still_refused(channel: AbstractChannel) -> None:
    # a different retention with replicas that differ too is still the clear error
    with pytest.raises(TopologyError, match=r"dimsebus\.log.*x-max-age"):
        await declare_topology(channel, StreamRetention(max_age="1h"), replicas=3)
