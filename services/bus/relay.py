"""The outbox relay: publishes spooled events with confirms, in a process of its own.

The relay runs beside the DICOM process, not inside it: publishing costs CPU
(aio-pika, confirms) that would otherwise contend with pynetdicom for the GIL
and slow C-STORE traffic, which DESIGN.md rule 4 forbids. The DICOM side only
appends to the SQLite outbox and rings the relay (``dimsebus.services.bus.wakeup``); the
relay publishes the oldest rows at once, or as the next batch while confirms are
outstanding (``dimsebus.services.bus.batching``), and deletes each one after its
confirm. One relay per outbox (a file lock), and a relay whose parent dies stops within
a second (``dimsebus.services.bus.lifeline``), so a restarted node does not race an orphan.
With several broker URLs (the nodes of a cluster) the relay moves to the next broker when
its connection is lost (``connection.Brokers``); publishes cut off by the loss are looked
for on the log, read from the new broker, before they are sent again, and a row is deleted
only once a broker confirmed it.
Rows spooled as records (``Outbox.append_record``) are made into their events
here, by the function its ``formats`` names for the record's format.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from aio_pika.abc import AbstractConnection

from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.backoff import Backoff
from dimsebus.services.bus import lifeline
from dimsebus.services.bus.batch import Outgoing
from dimsebus.services.bus.batching import (
    RelayView,
    Step,
    after_gathering,
    gather_for,
    next_step,
)
from dimsebus.services.bus.codec import outgoing, outgoing_event
from dimsebus.services.bus.connection import Brokers, confirming_channel, describe, masked
from dimsebus.services.bus.log import LogReader
from dimsebus.services.bus.outbox import Outbox, OutboxRow, read_depth
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.topology import (
    EVENTS_EXCHANGE,
    REDELIVERIES_EXCHANGE,
    StreamRetention,
    ensure_topology,
)
from dimsebus.services.bus.wakeup import ArrivalListener
from dimsebus.services.clock import sleep_unless
from dimsebus.services.errors import PublishInterrupted, UnroutableEvent

log = logging.getLogger(__name__)

RecordFormats = Mapping[str, Callable[[OutboxRow], CloudEvent]]
"""How to make the event of a recorded row, by its format (pure functions)."""


class UnreadableRecord(Exception):
    """An outbox record this relay cannot make its event of: the row stays spooled."""


@dataclass(frozen=True, slots=True)
class Taken:
    """What one batch did: rows taken from the outbox, confirmed, refused (left spooled)."""

    rows: int
    confirmed: int
    refused: int


class OutboxRelay:
    """Publishes an outbox to ``dimsebus.events`` with confirms, through outages."""

    def __init__(
        self,
        outbox: Outbox,
        amqp_url: str,
        *,
        name: str,
        window: int = 256,
        poll: float = 0.02,
        safety_poll: float = 2.0,
        formats: RecordFormats | None = None,
        retention: StreamRetention | None = None,
        replicas: int | None = None,
    ) -> None:
        """A relay of ``outbox`` to the broker at ``amqp_url`` (one URL or several,
        comma-separated), declaring the topology with ``retention`` and ``replicas``.

        It publishes as ``dimsebus.services.bus.batching`` decides: a row that arrives
        while no confirm is outstanding goes out at once; rows that arrive while a batch
        awaits its confirms go out together as the next batch (up to ``window * 4``),
        which waits a little longer (at most 5 ms) when the last one was costly.
        It learns of new rows from the outbox's wake-ups (``dimsebus.services.bus.wakeup``),
        and looks every ``safety_poll`` seconds in case one was lost; where it cannot
        listen for them, every ``poll`` seconds.
        """
        self._outbox = outbox
        self._formats = formats or {}
        self._brokers = Brokers(amqp_url, name)
        self._name = name
        self._retention = retention or StreamRetention()
        self._replicas = replicas
        self._window = window
        self._batch = window * 4
        self._poll = poll
        self._safety_poll = safety_poll
        # Rows whose publish was cut off by a lost connection: the broker may have stored
        # them. Before they are sent again, the log is searched for them (no duplicates).
        self._ambiguous: dict[int, str] = {}
        self._ambiguous_since: dt.datetime | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set, reconnecting as long as it takes.

        Rows an earlier relay published without seeing their confirms (it died) are
        looked for on the log first, like publishes cut off by a lost connection.
        """
        self._ambiguous, self._ambiguous_since = self._outbox.in_flight()
        if self._ambiguous:
            log.info("%d events were in flight when the last relay stopped", len(self._ambiguous))
        backoff = Backoff(first=0.5, cap=10.0)
        arrivals = ArrivalListener(self._outbox.path)
        stopping = asyncio.ensure_future(_until_set(stop))  # one waiter for every idle wait
        try:
            await self._connect_and_drain(stop, stopping, arrivals, backoff)
        finally:
            stopping.cancel()
            arrivals.close()

    async def _connect_and_drain(
        self,
        stop: asyncio.Event,
        stopping: asyncio.Future[bool],
        arrivals: ArrivalListener,
        backoff: Backoff,
    ) -> None:
        while not stop.is_set():
            tried = self._brokers.current
            try:
                connection = await self._brokers.open()
            except Exception as exc:
                log.warning(
                    "broker %s unreachable (%s); outbox depth %d",
                    masked(tried),
                    describe(exc),
                    self._outbox.depth(),
                )
                if self._brokers.round_failed:  # every broker failed: wait before the next
                    await backoff.wait(stop)
                continue
            async with connection:
                try:
                    await self._drain_forever(connection, stop, stopping, arrivals)
                    backoff.reset()
                except Exception as exc:  # a broker that is still starting, a closed channel
                    log.warning(
                        "relay interrupted (%s); outbox depth %d",
                        describe(exc),
                        self._outbox.depth(),
                    )
                    await backoff.wait(stop)
            if not stop.is_set():
                self._brokers.lost()

    async def _drain_forever(
        self,
        connection: AbstractConnection,
        stop: asyncio.Event,
        stopping: asyncio.Future[bool],
        arrivals: ArrivalListener,
    ) -> None:
        # Declare on a channel of its own: a stream that is still starting closes it.
        await ensure_topology(connection, self._retention, self._replicas)
        channel = await confirming_channel(connection)
        # No retries inside the publisher: a publish cut off by the connection is settled
        # here, by looking for it on the log, rather than sent twice.
        publisher = Publisher(channel, window=self._window, retry_for=0.0, observe=_uncounted)
        poll = self._safety_poll if arrivals.listening else self._poll
        step, view = Step.PUBLISH, RelayView(0, 0, arrived=True, limit=self._batch)
        started = time.monotonic()
        while not stop.is_set():
            if channel.is_closed:
                return  # reconnect from scratch
            if self._ambiguous:
                await self._settle_ambiguous(connection, publisher)
            if step is Step.WAIT_FOR_ROWS:
                await arrivals.wait(poll, stopping)
                # Rows came: the next batch is spaced from the last by its cost, as below.
                view = replace(view, arrived=True, elapsed=time.monotonic() - started)
                step = next_step(view)
            elif step is Step.GATHER:
                await asyncio.sleep(gather_for(view))
                step = after_gathering(view, arrivals.arrived())
            elif step is Step.BACK_OFF:
                await sleep_unless(stop, 1.0)
                step = Step.PUBLISH
            else:
                arrivals.arrived()  # forget earlier wake-ups: each later commit rings anew
                started, cpu = time.monotonic(), time.process_time()
                taken = await self._publish_oldest(publisher)
                view = RelayView(
                    taken.rows,
                    taken.refused,
                    arrivals.arrived(),
                    self._batch,
                    cost=time.process_time() - cpu,
                    elapsed=time.monotonic() - started,
                )
                step = next_step(view)

    async def _settle_ambiguous(self, connection: AbstractConnection, publisher: Publisher) -> None:
        """Settle the cut-off rows: those the log holds go to the work queues alone.

        The broker may have written such an event to the log and not yet to every work
        queue when it went (kill -9): it is sent again on ``dimsebus.redeliveries``, which
        only work queues are bound to, and dropped from the outbox once confirmed (or
        returned: no queue wants it). The others are published again as any row is.
        """
        assert self._ambiguous_since is not None
        since = self._ambiguous_since - dt.timedelta(seconds=5)
        wanted = {event_id: seq for seq, event_id in self._ambiguous.items()}
        found: list[int] = []
        async with LogReader(await connection.channel(), since) as reader:
            async for entry in reader.until_idle(1.5):
                event_id = str(entry.event.id) if entry.event is not None else None
                if event_id in wanted:
                    found.append(wanted.pop(event_id))
                    if not wanted:
                        break
        settled = await self._redeliver(publisher, found)
        log.info(
            "%d of %d cut-off events were already on the log, and were sent again to the "
            "work queues alone; %d will be published again",
            len(found),
            len(self._ambiguous),
            len(wanted),
        )
        unsettled = set(found) - set(settled)
        self._ambiguous = {seq: self._ambiguous[seq] for seq in unsettled}
        if self._ambiguous:  # never published again on dimsebus.events: settled anew first
            raise PublishInterrupted(
                f"{len(unsettled)} events on the log were not confirmed sent again to the "
                "work queues"
            )
        self._ambiguous_since = None

    async def _redeliver(self, publisher: Publisher, seqs: list[int]) -> list[int]:
        """Send the rows ``seqs`` (on the log already) to the work queues; remove those the
        broker confirmed or returned. Returns those settled: these, and any this relay
        cannot make (left spooled; it can never publish them, so never twice)."""
        rows = self._outbox.rows(seqs)
        ready = self._made(rows)
        unsent = set(seqs).difference(seq for seq, _ in ready)  # gone, or unreadable
        outcomes = await publisher.send_batch(
            [message for _, message in ready], REDELIVERIES_EXCHANGE
        )
        done = [
            seq
            for (seq, _), outcome in zip(ready, outcomes, strict=True)
            if isinstance(outcome, float | UnroutableEvent)
        ]
        self._outbox.remove(done, counted=False)  # counted as published the first time
        return [*done, *unsent]

    async def drain_once(self, publisher: Publisher) -> int:
        """Publish the oldest rows in one batch; delete those confirmed; how many were."""
        return (await self._publish_oldest(publisher)).confirmed

    async def _publish_oldest(self, publisher: Publisher) -> Taken:
        """Publish the oldest rows in one batch and await their confirms; delete those confirmed.

        A row this relay cannot make its event of stays spooled (logged), and so does
        one the broker did not confirm; a row whose publish was cut off is settled
        against the log before it is sent again.
        """
        started = dt.datetime.now(dt.UTC)
        rows = self._outbox.take(self._batch, started)
        if not rows:
            return Taken(0, 0, 0)
        ready = self._made(rows)
        published = await publisher.send_batch([message for _, message in ready], EVENTS_EXCHANGE)
        outcomes = dict(zip((seq for seq, _ in ready), published, strict=True))
        confirmed = {seq: took for seq, took in outcomes.items() if isinstance(took, float)}
        self._outbox.remove(list(confirmed), list(confirmed.values()))
        cut_off = {
            row.seq: row.event_id
            for row in rows
            if isinstance(outcomes.get(row.seq), PublishInterrupted)
        }
        if cut_off:
            self._ambiguous.update(cut_off)
            self._ambiguous_since = self._ambiguous_since or started
        failures = [outcome for outcome in outcomes.values() if isinstance(outcome, Exception)]
        if failures:
            log.warning(
                "%d of %d events not confirmed (%s); outbox depth %d",
                len(failures),
                len(ready),
                failures[0],
                self._outbox.depth(),
            )
        return Taken(len(rows), len(confirmed), len(failures))

    def _made(self, rows: list[OutboxRow]) -> list[tuple[int, Outgoing]]:
        """The message of each row this relay can make, by seq.

        A row it cannot make stays spooled, said once, and is left out of its later
        batches (``Outbox.skip``): it is no refusal by the broker to back off from, and the
        rows after it go on. A relay started later (another version) tries it again.
        """
        made: list[tuple[int, Outgoing]] = []
        unreadable: list[int] = []
        for row in rows:
            try:
                made.append((row.seq, self._outgoing(row)))
            except UnreadableRecord as exc:
                log.warning("%s: left in the outbox; this relay skips it", exc)
                unreadable.append(row.seq)
        self._outbox.skip(unreadable)
        return made

    def _outgoing(self, row: OutboxRow) -> Outgoing:
        """The message of a row: a spooled event as it is, a record made into its event."""
        if row.format is None:
            return outgoing(
                row.body,
                row.event_id,
                row.type,
                dt.datetime.fromisoformat(row.time),
                row.correlation_id,
                row.routing_key,
            )
        return outgoing_event(self._event_of(row))

    def _event_of(self, row: OutboxRow) -> CloudEvent:
        """The event of a recorded row, with the id the row was spooled under."""
        what = f"outbox row {row.seq} (event {row.event_id}, a {row.format!r} record)"
        make = self._formats.get(str(row.format))
        if make is None:
            raise UnreadableRecord(f"{what}: this relay reads only {sorted(self._formats)}")
        try:
            event = make(row)
        except Exception as exc:
            raise UnreadableRecord(f"{what}: {type(exc).__name__}: {exc}") from exc
        if str(event.id) != row.event_id:
            raise UnreadableRecord(f"{what}: made into an event with another id, {event.id}")
        return event


def _uncounted(_seconds: float) -> None:
    """The relay's publishes are counted in its outbox (``Outbox.remove``), where the
    node's /metrics reads them: this process serves no metrics of its own."""


async def _until_set(event: asyncio.Event) -> bool:
    return await event.wait()


NICENESS = 10
"""The relay's default scheduling niceness: on a busy machine it yields the CPU to the
DICOM side (DESIGN.md rule 4: C-STORE traffic pays for the outbox write, not for
publishing); on an idle one it runs at full speed, and the outbox absorbs bursts."""


def run_relay(
    outbox_path: Path,
    amqp_url: str,
    name: str,
    window: int,
    formats: RecordFormats | None = None,
    niceness: int = NICENESS,
    retention: StreamRetention | None = None,
    replicas: int | None = None,
) -> None:
    """The relay process: publish ``outbox_path`` until SIGTERM, or until the parent dies.

    ``RelayProcess`` starts it through ``dimsebus.services.bus.lifeline``, which ties it to its
    parent before it loads anything; started otherwise, it is tied to its parent here.
    """
    lifeline.hold()
    if niceness:
        os.nice(niceness)
    lock = (outbox_path.parent / f"{outbox_path.name}.relay.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one relay per outbox: a second one waits its turn

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        outbox = Outbox(outbox_path)
        relay = OutboxRelay(
            outbox,
            amqp_url,
            name=name,
            window=window,
            formats=formats,
            retention=retention,
            replicas=replicas,
        )
        await relay.run(stop)
        outbox.close()

    asyncio.run(main())


class RelayProcess:
    """A relay child process for one outbox, started and stopped by its DICOM process."""

    def __init__(
        self,
        outbox_path: Path,
        amqp_url: str,
        *,
        name: str,
        window: int = 256,
        niceness: int = NICENESS,
        retention: StreamRetention | None = None,
        replicas: int | None = None,
    ) -> None:
        """Start the relay of ``outbox_path``, at ``niceness`` (benchmarks may set 0); it
        declares the log with ``retention`` and ``replicas`` (its parent's settings)."""
        self.outbox_path = outbox_path
        argv = [
            sys.executable,
            "-m",
            "dimsebus.services.bus.lifeline",  # then the command, tied to this process
            "outbox",
            "relay",
            "--outbox",
            str(outbox_path),
            "--name",
            name,
            "--window",
            str(window),
            "--niceness",
            str(niceness),
        ]
        # AMQP_URL would win over DIMSEBUS_AMQP_URL in the child's settings: this URL only.
        inherited = {key: value for key, value in os.environ.items() if key != "AMQP_URL"}
        env = {**inherited, "DIMSEBUS_AMQP_URL": amqp_url, **lifeline.child_environment()}
        if retention is not None:  # the parent's config file is not the child's
            env["DIMSEBUS_LOG_MAX_AGE"] = retention.max_age
            env["DIMSEBUS_LOG_MAX_LENGTH_BYTES"] = str(retention.max_length_bytes)
        if replicas is not None:
            env["DIMSEBUS_REPLICAS"] = str(replicas)
        self._process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)

    def cpu_seconds(self) -> float:
        """CPU seconds the relay process has used so far, user and system (Linux: /proc)."""
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def alive(self) -> bool:
        """Whether the relay process is running."""
        return self._process.poll() is None

    def wait_empty(self, within: float) -> bool:
        """Block until the outbox is empty (True) or ``within`` seconds passed (False)."""
        deadline = time.monotonic() + within
        while read_depth(self.outbox_path):
            if time.monotonic() > deadline or self._process.poll() is not None:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        """Stop the relay; rows it did not publish stay in the outbox for the next one."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
