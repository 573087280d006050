"""C-STORE throughput on one association to dcmtk's storescp, four ways, in one run.

  plain pynetdicom   AE() defaults, send_c_store per file (no TCP_NODELAY)
  node, no events    dimsebus' sender: TCP_NODELAY, message ids, no capture
  node, events       the same with the capture, the SQLite outbox and the relay
                     publishing every response to RabbitMQ with confirms
  dcmtk storescu     TCP_NODELAY=1 storescu with the same files

storescp runs with --ignore (receives, does not write) so the SCU side is what
is measured. Each round runs the four back to back (alternating the order),
then more groups of the node without and with events. Rates are instances/s,
medians; a ratio is the median of the ratios of runs made back to back, since
the machine's speed drifts more over a whole run than the effect measured.

The images are 16 x 16 unless ``--rows`` says otherwise: ``--rows 512`` makes
them the size of a CT scanner's slices (0.5 MB each).

``--floor`` adds two runs to those groups, to show what the capture's design
costs before any of its own work (``Floor``):

  handlers bound     the node with EVT_DIMSE_SENT and EVT_DIMSE_RECV bound to
                     handlers that do nothing
  one commit each    the same, and one outbox commit per C-STORE-RSP (an exchange
                     record made in advance, a fresh event id swapped in) before
                     the sender has the response; the relay makes the event of it
                     and publishes it, as it does the capture's

    python -m bench.cstore [--files 500] [--rounds 5] [--pairs 3] [--rows 16] [--floor]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE, evt
from rich.console import Console
from rich.table import Table

from bench import machine
from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story
from dimsebus.services.bus.outbox import Outbox, Record
from dimsebus.services.bus.relay import RelayProcess
from dimsebus.services.clock import new_id, utc_now
from dimsebus.services.node.association import connection_handlers
from dimsebus.services.node.capture import SentStore, StoreResponse
from dimsebus.services.node.capture_shell import Capture
from dimsebus.services.node.config import NodeSettings
from dimsebus.services.node.jobs import Job
from dimsebus.services.node.sender import SendError, Target, send_files
from dimsebus.services.node.storepair import Recorder
from dimsebus.services.node.synthetic import write_study
from tests.broker import LOCAL_URL, local_rabbitmqctl, private_vhost
from tests.integration.peers import ENV, dcmtk, free_port, wait_for_port

Runner = Callable[[list[Path], int], float]


class RunEnded(Exception):
    """A run that did not store every file; the message says how far it got and why."""


def plain_pynetdicom(files: list[Path], port: int) -> float:
    """pynetdicom as its documentation shows it; a run whose association ends is ``RunEnded``.

    Under CPU load its association reactor can take a C-STORE-RSP meant for
    ``send_c_store`` ("Received unexpected C-STORE service message"): the sender then
    waits for the DIMSE timeout (30 s) and aborts (docs/upstream.md, fix 1; the node
    has ``reactor.ReactorCheckpoint``). That run says so instead of being timed.
    """
    ae = AE()
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    with heard_from_pynetdicom() as heard:
        started = time.perf_counter()
        assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
        for number, path in enumerate(files):
            if not assoc.is_established:
                how = "aborted" if assoc.is_aborted else "not established or released"
                raise RunEnded(
                    f"the association ended after {number} of {len(files)} C-STOREs ({how})"
                    + (f"; pynetdicom said: {'; '.join(heard)}" if heard else "")
                )
            assoc.send_c_store(dcmread(path))
        assoc.release()
        return time.perf_counter() - started


@contextlib.contextmanager
def heard_from_pynetdicom() -> Iterator[list[str]]:
    """The distinct warnings and errors pynetdicom logs inside the block, in order."""
    heard: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message not in heard:
                heard.append(message)

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("pynetdicom")
    logger.addHandler(handler)
    try:
        yield heard
    finally:
        logger.removeHandler(handler)


def node_without_events(files: list[Path], port: int) -> float:
    settings = NodeSettings(node_id="bench")
    started = time.perf_counter()
    send_files(settings, None, Target("STORESCP", "127.0.0.1", port), files)
    return time.perf_counter() - started


class NodeWithEvents:
    """The node's sender with its capture, outbox and relay, as a node runs them.

    The relay is a long-lived child of the node: it is started once, and has seen
    one event through before the first run's clock starts.
    """

    def __init__(self, url: str, folder: Path) -> None:
        self.settings = NodeSettings(
            node_id="bench",
            amqp_url=url,
            outbox_path=folder / "outbox.sqlite",
            archive_path=folder / "archive",
        )
        self.outbox = Outbox(self.settings.outbox_path, dicom_path=True)
        self.relay = RelayProcess(self.settings.outbox_path, url, name="dimsebus-bench")
        warmup = move_story(node_id="bench", start=utc_now(), ids=iter(new_id, None))
        self.outbox.append(warmup[:1])
        assert self.relay.wait_empty(within=60), "the relay did not start"
        self.publish_times: list[float] = []
        self.relay_cpu: list[float] = []  # seconds per event, the transfer and its publishing

    def __call__(self, files: list[Path], port: int) -> float:
        relay_cpu = self.relay.cpu_seconds()
        stored, confirmed = self._send(Capture.for_node(self.settings, self.outbox), files, port)
        self.publish_times.append(confirmed)
        self.relay_cpu.append((self.relay.cpu_seconds() - relay_cpu) / len(files))
        return stored

    def floor(self, commit: bool) -> Runner:
        """A ``Floor`` run of this node's outbox and relay (see the module doc)."""

        def run(files: list[Path], port: int) -> float:
            floor = Floor(self.settings.node_id, self.outbox, commit=commit)
            return self._send(floor, files, port)[0]

        return run

    def _send(self, capture: Capture, files: list[Path], port: int) -> tuple[float, float]:
        """Seconds until every C-STORE was answered, and until every event was confirmed."""
        started = time.perf_counter()
        send_files(self.settings, capture, Target("STORESCP", "127.0.0.1", port), files)
        stored = time.perf_counter() - started
        assert self.relay.wait_empty(within=120), "events were not all confirmed"
        return stored, time.perf_counter() - started

    def close(self) -> None:
        self.relay.stop()
        self.outbox.close()


class Floor(Capture):
    """The least a capture can do: the two DIMSE handlers, and one commit per response.

    With ``commit``, each C-STORE-RSP gets one outbox commit of an exchange record
    made in advance (only its event id is new) before the sender has the response,
    where the capture commits it (``Capture.on_conn_open``). Nothing is read off
    the messages, nothing joined, nothing formatted: the capture's own work is all
    that this leaves out.
    """

    def __init__(self, node_id: str, outbox: Outbox, *, commit: bool) -> None:
        super().__init__(node_id, outbox)
        self._commit = commit
        self._record = _sample_record(self.source)

    def handlers(self, job: Job | None = None) -> list[tuple[Any, ...]]:
        bound: list[tuple[Any, ...]] = [
            *connection_handlers(),
            (evt.EVT_DIMSE_SENT, _ignore),
            (evt.EVT_DIMSE_RECV, _ignore),
        ]
        if self._commit:
            bound.append((evt.EVT_CONN_OPEN, self._commit_each_response))
        return bound

    def _commit_each_response(self, event: evt.Event) -> None:
        dimse = event.assoc.dimse
        take = dimse.get_msg

        def get_msg(block: bool = False) -> Any:
            taken = take(block)
            if block and taken[1] is not None:
                self._outbox.append_record(self.fresh_record())
            return taken

        dimse.get_msg = get_msg  # type: ignore[method-assign]

    def fresh_record(self) -> Record:
        """The record of the next response: the same exchange under a new event id."""
        event_id = str(new_id())
        body = self._record.body.replace(self._record.event_id.encode(), event_id.encode())
        return dataclasses.replace(self._record, event_id=event_id, body=body)


def _ignore(event: evt.Event) -> None:
    """A handler that does nothing: what binding one costs pynetdicom's threads."""


def _sample_record(source: str) -> Record:
    """The record of a successful C-STORE exchange, as the capture spools one."""
    now = utc_now()
    sent = SentStore(
        association=ev.AssociationRef(
            id=new_id(),
            role="requestor",
            local_ae_title="DIMSEBUS",
            peer_ae_title="STORESCP",
            peer_host="127.0.0.1",
            peer_port=11112,
        ),
        presentation_context_id=1,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        message_id=1,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        affected_sop_instance_uid="1.2.826.0.1.3680043.8.498.1",
        move_originator=None,
        operation=ev.Operation(kind="store", id=new_id()),
        attempt=1,
        labels={},
        requested_at=now,
    )
    outstanding = Recorder().prepare(sent, new_id(), source)
    response = StoreResponse(status=0, message_id=1, affected_sop_instance_uid=None)
    return outstanding.record(response, now + dt.timedelta(milliseconds=1))


def dcmtk_storescu(files: list[Path], port: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [dcmtk("storescu"), "-aec", "STORESCP", "127.0.0.1", str(port), *map(str, files)],
        check=True,
        env=ENV,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--pairs", type=int, default=3, help="node runs without/with events per round"
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=16,
        help="image size, rows x rows 16-bit pixels (16: 512 bytes; 512: a CT slice, 0.5 MB)",
    )
    parser.add_argument(
        "--floor", action="store_true", help="also run the capture's floor (see above)"
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as folder,
        private_vhost(os.environ.get("AMQP_URL", LOCAL_URL), local_rabbitmqctl()) as url,
    ):
        files = write_study(Path(folder) / "study", args.files, seed="bench", rows=args.rows)
        port = free_port()
        scp = subprocess.Popen(
            [dcmtk("storescp"), "--ignore", "-aet", "STORESCP", str(port)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            node = NodeWithEvents(url, Path(folder))
            floor = {HANDLERS: node.floor(False), COMMIT: node.floor(True)} if args.floor else {}
            ended: list[str] = []
            try:
                groups = run_rounds(node, floor, files, port, args.rounds, args.pairs, ended)
            finally:
                node.close()
        finally:
            scp.terminate()
            scp.wait()
    show(groups, node.publish_times, node.relay_cpu, args.files, args.rows, args.rounds)
    show_ended(ended)


Group = dict[str, float]
"""Seconds per path, of runs made back to back."""


def run_rounds(
    node: NodeWithEvents,
    floor: dict[str, Runner],
    files: list[Path],
    port: int,
    rounds: int,
    pairs_per_round: int,
    ended: list[str],
) -> list[Group]:
    """Each round: the four paths back to back, then more groups without/with events.

    A run that did not store every file is left out of its group, and ``ended``
    says which and why.
    """
    runners: dict[str, Runner] = {
        PLAIN: plain_pynetdicom,
        NO_EVENTS: node_without_events,
        EVENTS: node,
        STORESCU: dcmtk_storescu,
    }
    close: dict[str, Runner] = {NO_EVENTS: node_without_events, EVENTS: node, **floor}
    groups: list[Group] = []
    for round_number in range(rounds):
        order = list(runners) if round_number % 2 == 0 else list(reversed(runners))
        groups.append(run_group(runners, order, files, port, f"round {round_number + 1}", ended))
        for pair in range(pairs_per_round - 1):  # the close ratios get more samples
            order = list(close) if pair % 2 == 0 else list(reversed(close))
            groups.append(run_group(close, order, files, port, f"round {round_number + 1}", ended))
    return groups


RUN_FAILURES = (RunEnded, SendError, subprocess.CalledProcessError)


def run_group(
    runners: dict[str, Runner],
    order: list[str],
    files: list[Path],
    port: int,
    where: str,
    ended: list[str],
) -> Group:
    """The runs of one group, back to back; one that did not finish is noted in ``ended``."""
    group: Group = {}
    for name in order:
        try:
            group[name] = runners[name](files, port)
        except RUN_FAILURES as exc:
            ended.append(f"{where}, {name}: {exc}")
    return group


def show_ended(ended: list[str]) -> None:
    """The runs left out of the tables, and why."""
    if not ended:
        return
    table = Table(title="runs that did not store every file (left out of the tables above)")
    table.add_column("run", justify="left")
    for line in ended:
        table.add_row(line)
    Console().print(table)


PLAIN, NO_EVENTS, EVENTS, STORESCU = (
    "plain pynetdicom (defaults)",
    "node, capture and publishing off",
    "node, capture and publishing on",
    "dcmtk storescu (TCP_NODELAY=1)",
)
LARGE_ROWS = 512
HANDLERS, COMMIT = (
    "floor: node, DIMSE handlers bound",
    "floor: node, one outbox commit each",
)


def paired(groups: list[Group], faster: str, slower: str) -> list[float]:
    """Rate ratios of ``faster`` to ``slower``, group by group, sorted.

    The runs of a group ran back to back: the machine's speed drifts by more than
    the effect measured over a whole run; runs next to each other see the same machine.
    """
    return sorted(g[slower] / g[faster] for g in groups if faster in g and slower in g)


def show(
    groups: list[Group],
    publish_times: list[float],
    relay_cpu: list[float],
    count: int,
    rows: int,
    rounds: int,
) -> None:
    names = list(dict.fromkeys(name for g in groups for name in g))
    rate = {name: count / statistics.median(g[name] for g in groups if name in g) for name in names}
    table = Table(
        title=f"C-STORE of {count} CT instances ({rows} x {rows}), one association, {rounds} rounds"
    )
    for column in ("path", "instances/s", "ms/instance"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, value in rate.items():
        table.add_row(name, f"{value:,.0f}", f"{1000 / value:.2f}")
    Console().print(table)
    ratios = Table(title="ratios of rates, median of back-to-back runs (range)")
    for column in ("ratio", "value", "range", "target"):
        ratios.add_column(column, justify="left" if column == "ratio" else "right")
    large = rows >= LARGE_ROWS  # issue 21's targets for CT-sized images
    lines = [
        (
            "node with events / plain pynetdicom",
            EVENTS,
            PLAIN,
            ">= 9x" if large else ">= 8x",
            "{:.1f}x",
        ),
        ("node with events / node without", EVENTS, NO_EVENTS, ">= 0.90", "{:.2f}"),
        (
            "node with events / dcmtk storescu",
            EVENTS,
            STORESCU,
            ">= 0.33" if large else "reported",
            "{:.2f}",
        ),
        ("floor, handlers bound / node without", HANDLERS, NO_EVENTS, "reported", "{:.2f}"),
        ("floor, one commit each / node without", COMMIT, NO_EVENTS, "reported", "{:.2f}"),
    ]
    for label, faster, slower, target, style in lines:
        values = paired(groups, faster, slower)
        if values:
            ratios.add_row(
                label,
                style.format(statistics.median(values)),
                f"{style.format(values[0])}-{style.format(values[-1])}",
                target,
            )
    confirmed = count / statistics.median(publish_times)
    ratios.add_row(
        "instances/s until every event is confirmed", f"{confirmed:,.0f}", "", "reported"
    )
    cpu = sorted(seconds * 1e6 for seconds in relay_cpu)
    ratios.add_row(
        "relay CPU per event (us), its process's user + system",
        f"{statistics.median(cpu):.0f}",
        f"{cpu[0]:.0f}-{cpu[-1]:.0f}",
        "<= 150",
    )
    Console().print(ratios)


if __name__ == "__main__":
    with machine.reported():
        main()
