"""The consumer's acks: one multiple-ack for the oldest deliveries settled together."""

from __future__ import annotations

import asyncio

from dimsebus.services.bus.consumer import AckGroup


class Channel:
    """Records the acks as a channel would send them."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bool]] = []

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        await asyncio.sleep(0)  # a write that yields, as aiormq's does
        self.sent.append((delivery_tag, multiple))


async def test_deliveries_that_settle_together_are_acked_by_one_multiple_ack() -> None:
    # given five deliveries
    channel = Channel()
    acks = AckGroup(channel)
    for tag in range(1, 6):
        acks.delivered(tag)
    # when their handlers finish in one turn of the loop, in any order
    await asyncio.gather(*(acks.ack(tag) for tag in (3, 1, 5, 2, 4)))
    # then one frame acks them all
    assert channel.sent == [(5, True)]


async def test_a_delivery_still_unsettled_is_never_covered_by_a_multiple_ack() -> None:
    # given three deliveries, the first still in its handler (or waiting for its requeue)
    channel = Channel()
    acks = AckGroup(channel)
    for tag in (1, 2, 3):
        acks.delivered(tag)
    # when the other two are acked
    await asyncio.gather(acks.ack(2), acks.ack(3))
    # then each is acked on its own
    assert channel.sent == [(2, False), (3, False)]
    # and once the first is requeued (nacked), the next ones are the oldest again
    acks.settled(1)
    acks.delivered(4)
    await acks.ack(4)
    assert channel.sent[-1] == (4, True)


async def test_acks_that_come_during_a_flush_follow_it_in_order() -> None:
    # given a flush under way
    channel = Channel()
    acks = AckGroup(channel)
    for tag in range(1, 5):
        acks.delivered(tag)
    first = asyncio.create_task(acks.ack(1))
    await asyncio.sleep(0)
    # when more acks arrive while it sends
    await asyncio.gather(acks.ack(2), acks.ack(3), acks.ack(4), first)
    # then they are sent after it, by the same flush, never before it
    tags = [tag for tag, _ in channel.sent]
    assert tags == sorted(tags)
    assert tags[-1] == 4
    assert all(multiple for _, multiple in channel.sent)
