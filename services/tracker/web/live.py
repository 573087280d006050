"""Moves as the tracker commits them, to each open page (Server-Sent Events), never blocking it.

The tracker calls ``Live.committed`` from its worker thread after each batch's moves and
checkpoint are committed; the moves are handed to the event loop and, once ``coalesce``
seconds have gathered a few commits, each subscriber gets the latest state of each move
that changed. A subscriber holds at most ``limit`` pending moves: one that cannot keep up
(a slow or gone browser) is told to start over (``resync``) instead of growing, and
nothing the tracker does ever waits for a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from dimsebus.services.tracker.progress import MoveKey, MoveState

Row = dict[str, Any]
RESYNC = "resync"


class Subscriber:
    """One open page's pending rows, latest state per move, bounded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: dict[str, Row] = {}
        self.resync = False
        self.closed = False
        self._ready = asyncio.Event()

    def offer(self, rows: Iterable[Row]) -> None:
        """Queue ``rows`` (a later state of a move replaces the pending one); over the limit,
        drop them all and ask the page to start over."""
        for row in rows:
            if len(self.rows) >= self.limit and row["move_id"] not in self.rows:
                self.start_over()
                return
            self.rows[row["move_id"]] = row
        self._ready.set()

    def start_over(self) -> None:
        """Drop what is pending: the page reloads the list instead."""
        self.rows.clear()
        self.resync = True
        self._ready.set()

    def close(self) -> None:
        """The tracker stops: the page's stream ends."""
        self.closed = True
        self._ready.set()

    async def next(self, heartbeat: float) -> tuple[list[Row], bool] | None:
        """The pending rows and whether to resync, once there are some; None when closed.

        ``([], False)`` after ``heartbeat`` seconds of nothing, so a gone browser is noticed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), heartbeat)
        self._ready.clear()
        if self.closed:
            return None
        rows, resync = list(self.rows.values()), self.resync
        self.rows, self.resync = {}, False
        return rows, resync


class Live:
    """The tracker's commits, fanned out to the pages that watch them."""

    def __init__(
        self, row_of: Callable[[MoveState], Row], coalesce: float = 0.1, limit: int = 500
    ) -> None:
        self.row_of = row_of
        self.coalesce = coalesce
        self.limit = limit
        self.subscribers: set[Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: dict[MoveKey, MoveState] = {}
        self._flush: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Bind to the running loop (the one the pages are served on)."""
        self._loop = asyncio.get_running_loop()

    def committed(self, moves: Iterable[MoveState]) -> None:
        """From any thread: these moves were just committed."""
        moves = list(moves)
        if self._loop is not None and moves and self.subscribers:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is watching
                self._loop.call_soon_threadsafe(self._gather, moves)

    def _gather(self, moves: list[MoveState]) -> None:
        for move in moves:
            self._changed[(move.source, move.move_id)] = move
        if self._flush is None and self._loop is not None:
            self._flush = self._loop.call_later(self.coalesce, self._send)

    def _send(self) -> None:
        self._flush = None
        changed, self._changed = list(self._changed.values()), {}
        if not self.subscribers:
            return
        if len(changed) > self.limit:  # more than any page may hold: none gets the rows
            for subscriber in self.subscribers:
                subscriber.start_over()
            return
        rows = [self.row_of(move) for move in changed]
        for subscriber in self.subscribers:
            subscriber.offer(rows)

    def subscribe(self) -> Subscriber:
        """A new page's subscription; ``unsubscribe`` it when the page goes."""
        subscriber = Subscriber(self.limit)
        if self._loop is None:
            subscriber.close()  # not serving live updates: the page keeps what it rendered
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """The page went."""
        self.subscribers.discard(subscriber)

    def close(self) -> None:
        """End every page's stream (the tracker stops)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        for subscriber in self.subscribers:
            subscriber.close()
        self._loop = None
