"""Act on finished C-MOVEs: subscribe a queue of your own to ``dimsebus.move.finished``.

The tracker publishes one ``dimsebus.move.finished`` per final outcome of a move
on the topic exchange ``dimsebus.events``, with the event type as routing key; a
move that changes after it finished (a retry) is published again with the next
``revision``. A redelivery repeats the event id, which this program skips.
This program binds its own queue to that key, validates each message with the
published models (``schemas``; other languages use schemas/json/*.json), acks
it, and prints one line per move::

    python examples/subscribe_finished.py --amqp-url amqp://guest:guest@localhost:5672/
    0192f4d1-...  MOVESCU->STORESCP  completed  completed=100 warning=0 failed=0

Without ``--queue`` the queue is the broker's, exclusive to this connection, and
gone when the program stops: moves that finish while it is not running are not
seen. With ``--queue NAME`` it is a durable quorum queue that keeps them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from dimsebus.schemas.events import MoveFinished, parse_event
from dimsebus.schemas.limits import MAX_BODY_BYTES

EXCHANGE = "dimsebus.events"
ROUTING_KEY = "dimsebus.move.finished"


def describe(event: MoveFinished) -> str:
    """One line: move id, requestor->destination, outcome, counts (and why it failed)."""
    data, counts = event.data, event.data.counts
    line = (
        f"{data.operation.id}  {data.requestor_ae_title or '?'}->"
        f"{data.destination_ae_title or '?'}  {data.outcome}  completed={counts.completed} "
        f"warning={counts.warning} failed={counts.failed}"
    )
    if data.revision > 1:  # the move changed after it finished (a retry): this is newer
        line += f"  revision={data.revision}"
    if data.reason:  # outcome failed: the move as a whole was refused
        line += f"  reason={data.reason!r}"
    return line


def validated(message: AbstractIncomingMessage) -> MoveFinished | None:
    """The message as a MoveFinished event, or None (with the reason on stderr)."""
    if len(message.body) > MAX_BODY_BYTES:  # refuse a huge body before parsing it
        print(f"skipped {message.message_id}: {len(message.body)} bytes", file=sys.stderr)
        return None
    try:
        event = parse_event(message.body)
    except ValidationError as exc:  # the first problem, with the field it is in
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        print(f"skipped {message.message_id}: {where}: {error['msg']}", file=sys.stderr)
        return None
    if not isinstance(event, MoveFinished):
        print(f"skipped {message.message_id}: a {event.type}", file=sys.stderr)
        return None
    return event


async def bind(channel: AbstractChannel, name: str | None) -> AbstractQueue:
    """Our queue, bound to the finished events on dimsebus's exchange."""
    # The exchange is dimsebus's: look it up (passive), never declare it here.
    exchange = await channel.get_exchange(EXCHANGE, ensure=True)
    if name:  # durable: finished moves wait here while we are down
        queue = await channel.declare_queue(
            name, durable=True, arguments={"x-queue-type": "quorum"}
        )
    else:  # the broker names it; it lives as long as this connection
        queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, ROUTING_KEY)
    return queue


async def subscribe(
    url: str, queue_name: str | None, destination: str | None, count: int | None
) -> None:
    """Print each finished move (to ``destination``) until ``count`` were printed."""
    seen: set[str] = set()  # event ids: a redelivery repeats one (persist it in real use)
    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=32)
        queue = await bind(channel, queue_name)
        print(f"listening on {queue.name} for {ROUTING_KEY}", file=sys.stderr, flush=True)
        async with queue.iterator() as messages:
            async for message in messages:
                event = validated(message)
                if event is None:  # not ours to fix: dead-letter it (if the queue has a DLX)
                    await message.reject(requeue=False)
                    continue
                wanted = destination in (None, event.data.destination_ae_title)
                if wanted and str(event.id) not in seen:
                    seen.add(str(event.id))
                    print(describe(event), flush=True)
                await message.ack()  # after the effect (here: the line printed)
                if count is not None and len(seen) >= count:
                    return


def main() -> int:
    """Parse the options and subscribe; exit 0 after ``--count`` moves, 1 on ``--timeout``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", default="amqp://guest:guest@localhost:5672/")
    parser.add_argument("--queue", help="a durable queue of this name (default: a temporary one)")
    parser.add_argument("--destination", help="only moves to this AE title (say, your AI node)")
    parser.add_argument("--count", type=int, help="exit after this many finished moves")
    parser.add_argument("--timeout", type=float, help="exit 1 after this many seconds")
    args = parser.parse_args()
    try:
        asyncio.run(
            asyncio.wait_for(
                subscribe(args.amqp_url, args.queue, args.destination, args.count), args.timeout
            )
        )
    except TimeoutError:
        print(f"timed out after {args.timeout} s", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
