"""Reading the ``dimsebus.log`` stream from an offset (first, last, next or a number)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractQueueIterator

from dimsebus.schemas.events import Event
from dimsebus.schemas.limits import MAX_BODY_BYTES
from dimsebus.services.bus.codec import from_message
from dimsebus.services.bus.topology import LOG_STREAM
from dimsebus.services.errors import ConfigError, InvalidEvent

NAMED_OFFSETS = ("first", "last", "next")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One message of the log: its stream offset and its event, or why it is not one.

    A record that is not a valid event (too big, not the contract, not under its own
    routing key) is an entry with ``error``: readers skip it, naming the offset.
    """

    offset: int
    routing_key: str
    event: Event | None
    error: str | None = None


def parse_offset(text: str) -> str | int:
    """``first``, ``last``, ``next`` or a non-negative integer offset."""
    if text in NAMED_OFFSETS:
        return text
    if text.isdigit():
        return int(text)
    raise ConfigError(f"--from: {text!r} is not first, last, next or a stream offset")


class LogReader:
    """Reads the log from ``offset`` on; subscribed once ``async with`` has entered.

    The reader owns ``channel`` and closes it on exit.

    Entering before publishing guarantees that ``offset="next"`` sees what follows.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        offset: str | int | dt.datetime = "first",
        *,
        prefetch: int = 1000,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._channel = channel
        self._offset = offset
        self._prefetch = prefetch
        self._max_body_bytes = max_body_bytes
        self._messages: AbstractQueueIterator | None = None
        self._unacked = 0

    async def __aenter__(self) -> LogReader:
        await self._channel.set_qos(prefetch_count=self._prefetch)
        queue = await self._channel.get_queue(LOG_STREAM, ensure=False)
        self._messages = queue.iterator(arguments={"x-stream-offset": self._offset})
        await self._messages.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Closing the channel returns unacked deliveries; the iterator's own close()
        # would nack them, which a stream refuses by closing the connection.
        await self._channel.close()

    def __aiter__(self) -> LogReader:
        return self

    async def until_idle(self, idle: float = 2.0) -> AsyncIterator[LogEntry]:
        """Entries until none arrives for ``idle`` seconds: the end of the log, for a replay."""
        while True:
            try:
                yield await asyncio.wait_for(self.__anext__(), idle)
            except TimeoutError:
                return

    async def __anext__(self) -> LogEntry:
        assert self._messages is not None, "enter the reader with `async with` first"
        message = await self._messages.__anext__()
        offset = int((message.headers or {}).get("x-stream-offset", -1))  # type: ignore[arg-type]
        key = message.routing_key or ""
        try:
            entry = LogEntry(offset, key, from_message(message, self._max_body_bytes))
        except InvalidEvent as exc:
            entry = LogEntry(offset, key, None, str(exc))
        # A stream needs acks only as credit; one multiple-ack per batch saves frames,
        # and stays well under the prefetch so the broker never waits for it.
        self._unacked += 1
        if self._unacked >= min(100, self._prefetch // 2 or 1):
            await message.ack(multiple=True)
            self._unacked = 0
        return entry
