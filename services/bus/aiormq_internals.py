"""Every reach into aiormq's channel internals: what ``dimsebus.services.bus.batch`` needs.

aiormq publishes one message per call (``Channel.basic_publish``): one write and one
drain per message. ``publish_batch`` writes a whole batch at once and registers each
message's confirmation as ``basic_publish`` does, with the channel's own attributes
(``lock``, ``delivery_tag``, ``confirmations``, ``message_id_delivery_tag``,
``write_queue``, ``_split_body``). Each function below names what it relies on in
the release it was written for (``WRITTEN_FOR``, pinned in pyproject.toml);
``tests/unit/test_library_canaries.py`` checks those against the installed aiormq.
No other module touches them.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from importlib.metadata import version
from types import TracebackType
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame
from pamqp import commands as spec

WRITTEN_FOR = "7.2.4"
"""The aiormq release these functions were written and checked against."""


def check_version(found: str) -> None:
    """Refuse an aiormq of another minor line; warn about another patch release."""
    if found == WRITTEN_FOR:
        return
    what = (
        f"{__name__} uses channel internals of aiormq {WRITTEN_FOR}, found {found}: run "
        "tests/unit/test_library_canaries.py and tests/integration/test_batch.py, then "
        "update WRITTEN_FOR and the pin in pyproject.toml"
    )
    if found.split(".")[:2] != WRITTEN_FOR.split(".")[:2]:
        raise ImportError(what)
    warnings.warn(what, RuntimeWarning, stacklevel=2)


check_version(version("aiormq"))


def publish_lock(channel: aiormq.Channel) -> AbstractAsyncContextManager[Any]:
    """The lock ``basic_publish`` holds while it numbers and writes a publish."""
    return channel.lock


def number_publishes(
    channel: aiormq.Channel, message_ids: Sequence[str]
) -> tuple[int, list[asyncio.Future[Any]]]:
    """Number the next publishes and register a confirmation future for each.

    As ``basic_publish`` does under the lock with publisher confirms: the channel's
    ``delivery_tag`` counts each publish, ``confirmations[tag]`` is settled by the
    broker's ack, nack or (with ``message_id_delivery_tag``) a Basic.Return. Returns
    the tag before the first one (for ``unnumber_publishes``) and the futures in order.
    """
    before = channel.delivery_tag
    futures: list[asyncio.Future[Any]] = []
    for message_id in message_ids:
        channel.delivery_tag += 1
        future = channel.create_future()
        channel.confirmations[channel.delivery_tag] = future
        channel.message_id_delivery_tag[message_id] = channel.delivery_tag
        futures.append(future)
    return before, futures


def unnumber_publishes(channel: aiormq.Channel, before: int, message_ids: Sequence[str]) -> None:
    """Undo ``number_publishes`` for publishes never written: the broker never saw their tags."""
    forget_message_ids(channel, before, message_ids)
    for tag in range(before + 1, channel.delivery_tag + 1):
        channel.confirmations.pop(tag, None)
    channel.delivery_tag = before


def forget_message_ids(channel: aiormq.Channel, before: int, message_ids: Sequence[str]) -> None:
    """Drop these publishes' ids from the channel's lookup of returned messages."""
    for tag, message_id in enumerate(message_ids, start=before + 1):
        if channel.message_id_delivery_tag.get(message_id) == tag:
            del channel.message_id_delivery_tag[message_id]


def max_content_size(channel: aiormq.Channel) -> int:
    """The most body bytes in one content frame (``_split_body`` splits bodies by it)."""
    return int(channel.max_content_size)


async def write(channel: aiormq.Channel, payload: ChannelFrame) -> None:
    """Queue marshalled frames for the connection's writer, as ``basic_publish`` does."""
    await channel.write_queue.put(payload)


def refused_open_frame(tb: TracebackType | None) -> spec.Connection.Close | None:
    """The broker's Connection.Close behind an ``InvalidFrameError`` from a refused open.

    aiormq 7.2 answers a Connection.Close received instead of Connection.OpenOk with
    ``InvalidFrameError`` naming only the frame's object; its ``Connection._rpc`` still
    holds the frame in its local ``frame``, which the traceback keeps.
    """
    while tb is not None:
        frame = tb.tb_frame.f_locals.get("frame")
        if isinstance(frame, spec.Connection.Close):
            return frame
        tb = tb.tb_next
    return None
