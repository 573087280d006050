"""The tracker's shell: read the log from the checkpoint, fold, save, publish derived events.

Each batch is folded in memory, its derived events are spooled to the
tracker's outbox (ids derived from the move and its state, so a replay
re-derives the same ids), then the moves and the batch's last offset are
committed together. A relay process publishes the outbox.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aio_pika.abc import AbstractConnection

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.bus.log import LogEntry, LogReader, StreamLogReader, open_log
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.bus.relay import RelayProcess
from dimsebus.services.bus.session import supervised
from dimsebus.services.bus.stream_client import ChunkNotReadable
from dimsebus.services.bus.topology import ensure_topology
from dimsebus.services.clock import utc_now
from dimsebus.services.http import serving
from dimsebus.services.leadership import leadership_for, while_active
from dimsebus.services.metrics import TRACKER_APPLIED, GaugeCollector, OutboxCollector
from dimsebus.services.sql import Fence
from dimsebus.services.tracker import api
from dimsebus.services.tracker.ports import EventSpool, MoveStore
from dimsebus.services.tracker.progress import (
    RESPONSES,
    MoveKey,
    MoveState,
    apply,
    apply_all,
    finish,
    may_be_final,
    move_key,
    progress_data,
)

# Re-exported: tests and the bench import the settings from here.
from dimsebus.services.tracker.settings import TrackerSettings as TrackerSettings
from dimsebus.services.tracker.store import Rejected, open_store
from dimsebus.services.tracker.views import live_row
from dimsebus.services.tracker.web.live import Live

log = logging.getLogger(__name__)
YOUNG_OBJECTS = 20_000
DERIVED_IDS = uuid.UUID("5f1c3f43-8f0e-4a53-9a43-2c1a4f7d0a11")


class Tracker:
    """Folds batches of log entries into the store, deriving progress and outcome events."""

    def __init__(self, settings: TrackerSettings, store: MoveStore, outbox: EventSpool) -> None:
        self.settings = settings
        self.store = store
        self.outbox = outbox
        self.source = f"dimsebus://tracker/{settings.tracker_id}"
        # Moves still open, least recently changed first: a finished move leaves at once,
        # the oldest open ones once there are more than ``settings.cached_moves``. A late
        # event for a move that left is folded into the state loaded back from the store.
        self._moves: OrderedDict[MoveKey, MoveState] = OrderedDict()
        self._last_progress: dict[MoveKey, float] = {}
        self.applied = 0
        # Told the moves of each batch once they are committed (the web page's live feed).
        self.on_commit: Callable[[list[MoveState]], None] | None = None

    def handle(self, entries: list[LogEntry], now: dt.datetime) -> list[CloudEvent]:
        """Apply a batch, spool what it derives, commit moves and checkpoint together."""
        changed: dict[MoveKey, MoveState] = {}
        derived: list[CloudEvent] = []
        rejected = [
            Rejected(e.offset, e.routing_key, e.error or "not an event")
            for e in entries
            if e.event is None
        ]
        for skipped in rejected:
            log.warning(
                "skipping log entry %d (%s): %s",
                skipped.offset,
                skipped.routing_key,
                skipped.reason,
            )
        by_move: dict[MoveKey, list[CloudEvent]] = {}
        for entry in entries:
            if entry.event is not None and (key := move_key(entry.event)) is not None:
                by_move.setdefault(key, []).append(entry.event)
        # each move as the store has it
        committed = {key: self._moves.get(key) or self.store.load(key) for key in by_move}
        for key, events in by_move.items():
            after, found = self._fold(committed[key], events, now)
            if after is not None and after is not committed[key]:
                changed[key] = after
            derived += found
        if derived:
            self.outbox.append(derived)
        if entries:
            self.store.save(
                changed.values(), entries[-1].offset, rejected, before=committed, folded=by_move
            )
            if self.on_commit is not None and changed:
                self.on_commit(list(changed.values()))
        self._keep(changed)
        self.applied += len(entries)
        TRACKER_APPLIED.inc(len(entries))
        return derived

    def _keep(self, changed: dict[MoveKey, MoveState]) -> None:
        """Keep the committed open moves in memory; forget the finished and the oldest."""
        for key, move in changed.items():
            if move.finished is not None and move.finished.outcome is not None:
                self._forget(key)
            else:
                self._moves[key] = move
                self._moves.move_to_end(key)
        while len(self._moves) > self.settings.cached_moves:
            self._forget(next(iter(self._moves)))

    def _forget(self, key: MoveKey) -> None:
        self._moves.pop(key, None)
        self._last_progress.pop(key, None)

    @property
    def cached(self) -> int:
        """How many moves the tracker holds in memory."""
        return len(self._moves)

    def _fold(
        self, move: MoveState | None, events: list[CloudEvent], now: dt.datetime
    ) -> tuple[MoveState | None, list[CloudEvent]]:
        """A move's events of a batch folded in order, deriving what each one would.

        Responses that can derive nothing (the move may not be final, no progress is
        due) fold at once, on one copy of the move (``apply_all``)."""
        derived: list[CloudEvent] = []
        at = 0
        while at < len(events):
            run = self._quiet(move, events, at, now)
            after = apply_all(move, events[at : at + run]) if run else apply(move, events[at])
            last = events[at + max(run, 1) - 1]
            at += max(run, 1)
            if after is None or after is move:
                continue  # repeats
            move, found = self._derive(after, last, now)
            derived += found
        return move, derived

    def _quiet(
        self, move: MoveState | None, events: list[CloudEvent], at: int, now: dt.datetime
    ) -> int:
        """How many responses from ``at`` on fold at once, none of them deriving an event."""
        if move is None or may_be_final(move) or self._due(move, events[at], now):
            return 0
        end = at
        while end < len(events) and isinstance(events[end], RESPONSES):
            end += 1
        return end - at

    def _due(self, move: MoveState, event: CloudEvent, now: dt.datetime) -> bool:
        """Whether ``event`` is live and the move's last progress older than the interval."""
        live = (now - event.time).total_seconds() <= self.settings.live_window
        last = self._last_progress.get((move.source, move.move_id), 0.0)
        return live and now.timestamp() - last >= self.settings.progress_interval

    def _derive(
        self, move: MoveState, event: CloudEvent, now: dt.datetime
    ) -> tuple[MoveState, list[CloudEvent]]:
        """The move with what the tracker derived from it, and the events to publish.

        A final outcome is published once, numbered by its revision, which is kept
        with the move (committed with the checkpoint): a restart or a replay of the
        log derives the same revisions, and so the same event ids.
        """
        retries = self.settings.retries_for(move.node_id)
        if move.retries_on != retries:
            move = move.model_copy(update={"retries_on": retries})
        due = self._due(move, event, now)
        if not due and not may_be_final(move):
            return move, []  # counting a move's instances costs as much as the move is long
        stall = dt.timedelta(seconds=self.settings.stall_after)
        data = progress_data(move, now, stall)
        move, revision = finish(move, data.outcome, data.counts)
        if revision is not None:
            finished = ev.MoveFinishedData(**dict(data), revision=revision)
            return move, [self._event(ev.MoveFinished, move, finished, f"finished|{revision}")]
        if due:
            self._last_progress[(move.source, move.move_id)] = now.timestamp()
            name = f"progressed|{data.outcome}|{len(move.seen)}"
            return move, [self._event(ev.MoveProgressed, move, data, name)]
        return move, []

    def _event(
        self, model: type[CloudEvent], move: MoveState, data: ev.MoveProgressData, kind: str
    ) -> CloudEvent:
        name = f"{move.source}|{move.move_id}|{kind}"
        return model.model_validate(
            {
                "id": uuid.uuid5(DERIVED_IDS, name),
                "source": self.source,
                "time": data.at,
                "subject": str(move.move_id),
                "data": data,
            }
        )


def collect_less_often() -> None:
    """Let ``YOUNG_OBJECTS`` objects, not CPython's 700, be made between two collections of
    the youngest generation: for the tracker's process (``dimsebus tracker``).

    A batch's events live until the batch is folded. Collected every 700 objects, each
    is traversed by several collections, and promoted to older generations, which are
    then traversed too: 15-40 us per event of a replay (issue 21; 127-140 us/event with
    20,000, 140-177 with 700, on this 2-core machine). Memory held by garbage in cycles
    is let go a little later.
    """
    gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])


async def run_tracker(
    settings: TrackerSettings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    """Follow the log from the checkpoint until ``stop``; reconnects through outages.

    On a PostgreSQL store shared with other trackers, only the one holding the lock
    (``dimsebus.services.leadership``) reads the log; the others stand by, serve /healthz,
    /metrics and the read-only API from the shared database, and take over from its
    committed checkpoint when it goes.
    """
    store = open_store(settings.db)
    await asyncio.to_thread(store.fill_listing)  # moves saved before the list had columns
    outbox = Outbox(settings.outbox_path)
    stall = dt.timedelta(seconds=settings.stall_after)
    live = Live(lambda move: live_row(move, utc_now(), stall))
    # In either role: events a killed term left in this outbox are published now.
    relay = RelayProcess(
        settings.outbox_path,
        settings.amqp_url,
        name=f"dimsebus-{settings.tracker_id}-relay",
        retention=settings.retention,
        replicas=settings.replicas,
    )
    leadership = leadership_for(settings.db, "tracker", settings.tracker_id)
    current: Tracker | None = None  # this term of office's: each starts with nothing cached
    applied_before = 0  # events folded in the terms that ended

    def role() -> str:
        return "active" if leadership is None or leadership.active else "standby"

    collectors = [
        OutboxCollector(settings.outbox_path, prefix="dimsebus_tracker_outbox"),
        GaugeCollector(
            {
                "dimsebus_moves_in_progress": (
                    "Moves not finished: in progress, retrying or stalled",
                    lambda: api.moves_in_progress(settings),
                ),
                "dimsebus_tracker_active": (
                    "1 while this tracker is the active one, 0 while it stands by",
                    lambda: float(role() == "active"),
                ),
            }
        ),
    ]

    def health() -> dict[str, Any]:
        return {
            "ok": relay.alive,
            "relay_running": relay.alive,
            "applied": applied_before + (current.applied if current else 0),
            "role": role(),
        }

    async def term(term_stop: asyncio.Event, fence: Fence | None) -> None:
        # A new term starts from the committed checkpoint, with no moves cached from before.
        nonlocal current, applied_before
        tracker = current = Tracker(settings, store, outbox)
        tracker.on_commit = live.committed
        store.fenced(fence)

        async def session(connection: AbstractConnection, stop: asyncio.Event) -> None:
            await follow(tracker, settings, connection, stop, ready)

        try:
            name = f"dimsebus-{settings.tracker_id}"
            await supervised(settings.amqp_url, name, session, term_stop)
        finally:
            store.fenced(None)
            applied_before += tracker.applied  # an ended term's moves are not kept
            current = None

    try:
        live.start()
        async with serving(settings, collectors, health, api.routes(settings, live, outbox)):
            try:
                await while_active(leadership, stop, term)
            finally:
                live.close()  # the pages' live feeds end, so the server can stop
    finally:
        await asyncio.to_thread(relay.wait_empty, 5.0)
        relay.stop()
        outbox.close()
        store.close()


async def follow(
    tracker: Tracker,
    settings: TrackerSettings,
    connection: AbstractConnection,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
) -> None:
    """Read the log from after the checkpoint into ``tracker`` until ``stop``."""
    checkpoint = tracker.store.checkpoint()
    start: str | int = settings.start_from if checkpoint is None else checkpoint + 1
    log.info("tracker reading dimsebus.log from %s", start)
    await ensure_topology(connection, settings.retention, settings.replicas)
    await _read(tracker, settings, connection, start, stop, ready)


async def _read(
    tracker: Tracker,
    settings: TrackerSettings,
    connection: AbstractConnection,
    start: str | int | dt.datetime,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
) -> None:
    reading, name = settings, f"dimsebus-{settings.tracker_id}"
    while True:
        try:
            async with open_log(connection, start, reading, name=name, prefetch=2000) as reader:
                await _fold(tracker, settings, reader, stop, ready)
            return
        except ChunkNotReadable as exc:
            # The stream would stop at the same chunk again: this session reads on over
            # AMQP, from what the fold committed, or with nothing committed yet, from where
            # the stream reader says nothing is missed (not "next" again: a later "next").
            checkpoint = tracker.store.checkpoint()
            start = resume_point(start, checkpoint, exc.resume_from)
            log.warning("tracker reading dimsebus.log over AMQP from %s: %s", start, exc)
            reading = settings.model_copy(update={"log_protocol": "amqp"})


def resume_point(
    start: str | int | dt.datetime, checkpoint: int | None, unread: str | int | dt.datetime | None
) -> str | int | dt.datetime:
    """Where a reader of the log that replaces one started at ``start`` begins: after the
    ``checkpoint`` the fold committed, else where the one replaced says nothing it gave
    out is lost (``unread``: ``StreamLogReader.resume_from``), else at ``start`` again."""
    if checkpoint is not None:
        return checkpoint + 1
    return start if unread is None else unread


async def _fold(
    tracker: Tracker,
    settings: TrackerSettings,
    reader: LogReader | StreamLogReader,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
) -> None:
    """Fold what ``reader`` gives until ``stop``, and the batch being folded, if any."""
    folding: asyncio.Future[list[CloudEvent]] | None = None  # a batch folded on a worker thread
    try:
        if ready is not None:
            ready.set()
        while not stop.is_set():
            # The next batch is taken and decoded while the last one is folded (its SQLite
            # commit lets go of the GIL); batches are folded one at a time, in order.
            # What came meanwhile joins the batch: a batch grows with the backlog.
            batch = await reader.batch(settings.batch_size, 0.2)
            if folding is not None:
                await folding
                folding = None
            if batch:
                folding = asyncio.ensure_future(asyncio.to_thread(tracker.handle, batch, utc_now()))
    finally:
        if folding is not None:
            await folding  # never two folds at once, even across a new session
