"""C-STORE throughput on one association to dcmtk's storescp, four ways, in one run.

  plain pynetdicom   AE() defaults, send_c_store per file (no TCP_NODELAY)
  node, no events    dimsebus' sender: TCP_NODELAY, message ids, no capture
  node, events       the same with the capture, the SQLite outbox and the relay
                     publishing every response to RabbitMQ with confirms
  dcmtk storescu     TCP_NODELAY=1 storescu with the same files

storescp runs with --ignore (receives, does not write) so the SCU side is what
is measured. Each round runs the four back to back (alternating the order),
then more pairs of the node without and with events. Rates are instances/s,
medians; a ratio is the median of the ratios of runs made back to back, since
the machine's speed drifts more over a whole run than the effect measured.

    python -m bench.cstore [--files 500] [--rounds 5] [--pairs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from rich.console import Console
from rich.table import Table

from schemas.examples import move_story
from services.bus.outbox import Outbox
from services.bus.relay import RelayProcess
from services.clock import new_id, utc_now
from services.node.config import NodeSettings
from services.node.dimse import Capture
from services.node.sender import Target, send_files
from services.node.synthetic import write_study
from tests.broker import LOCAL_URL, local_rabbitmqctl, private_vhost
from tests.integration.peers import ENV, dcmtk, free_port, wait_for_port

Runner = Callable[[list[Path], int], float]


def plain_pynetdicom(files: list[Path], port: int) -> float:
    ae = AE()
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    started = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    for path in files:
        assoc.send_c_store(dcmread(path))
    assoc.release()
    return time.perf_counter() - started


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
        self.outbox = Outbox(self.settings.outbox_path, checkpoints=False)
        self.relay = RelayProcess(self.settings.outbox_path, url, name="dimsebus-bench")
        warmup = move_story(node_id="bench", start=utc_now(), ids=iter(new_id, None))
        self.outbox.append(warmup[:1])
        assert self.relay.wait_empty(within=60), "the relay did not start"
        self.publish_times: list[float] = []
        self.relay_cpu: list[float] = []  # seconds per event, the transfer and its publishing

    def __call__(self, files: list[Path], port: int) -> float:
        capture = Capture.for_node(self.settings, self.outbox)
        relay_cpu = self.relay.cpu_seconds()
        started = time.perf_counter()
        send_files(self.settings, capture, Target("STORESCP", "127.0.0.1", port), files)
        stored = time.perf_counter() - started
        assert self.relay.wait_empty(within=120), "events were not all confirmed"
        self.publish_times.append(time.perf_counter() - started)
        self.relay_cpu.append((self.relay.cpu_seconds() - relay_cpu) / len(files))
        return stored

    def close(self) -> None:
        self.relay.stop()
        self.outbox.close()


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
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as folder,
        private_vhost(os.environ.get("AMQP_URL", LOCAL_URL), local_rabbitmqctl()) as url,
    ):
        files = write_study(Path(folder) / "study", args.files, seed="bench")
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
            try:
                times, pairs = run_rounds(node, files, port, args.rounds, args.pairs)
            finally:
                node.close()
        finally:
            scp.terminate()
            scp.wait()
    show(times, pairs, node.publish_times, node.relay_cpu, args.files)


def run_rounds(
    node: NodeWithEvents, files: list[Path], port: int, rounds: int, pairs_per_round: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each round: the four paths back to back, then more pairs without/with events."""
    runners: dict[str, Runner] = {
        PLAIN: plain_pynetdicom,
        NO_EVENTS: node_without_events,
        EVENTS: node,
        STORESCU: dcmtk_storescu,
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    pairs: dict[str, list[float]] = {NO_EVENTS: [], EVENTS: []}
    for round_number in range(rounds):
        order = list(runners) if round_number % 2 == 0 else list(reversed(runners))
        for name in order:
            times[name].append(runners[name](files, port))
        for pair in range(pairs_per_round - 1):  # the close ratio gets more samples
            for name in (EVENTS, NO_EVENTS) if pair % 2 == 0 else (NO_EVENTS, EVENTS):
                pairs[name].append(runners[name](files, port))
    return times, pairs


PLAIN, NO_EVENTS, EVENTS, STORESCU = (
    "plain pynetdicom (defaults)",
    "node, capture and publishing off",
    "node, capture and publishing on",
    "dcmtk storescu (TCP_NODELAY=1)",
)


def paired(faster: list[float], slower: list[float]) -> list[float]:
    """Rate ratios run by run, sorted: each pair of runs ran back to back.

    The machine's speed drifts by more than the effect measured over a whole run;
    two runs next to each other see the same machine.
    """
    return sorted(s / f for f, s in zip(faster, slower, strict=True))


def show(
    times: dict[str, list[float]],
    pairs: dict[str, list[float]],
    publish_times: list[float],
    relay_cpu: list[float],
    count: int,
) -> None:
    rounds = len(times[PLAIN])
    times = {name: values + pairs.get(name, []) for name, values in times.items()}
    rate = {name: count / statistics.median(values) for name, values in times.items()}
    table = Table(title=f"C-STORE of {count} CT instances, one association, {rounds} rounds")
    for column in ("path", "instances/s", "ms/instance"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, value in rate.items():
        table.add_row(name, f"{value:,.0f}", f"{1000 / value:.2f}")
    Console().print(table)
    ratios = Table(title="ratios of rates, median of back-to-back runs (range)")
    for column in ("ratio", "value", "range", "target"):
        ratios.add_column(column, justify="left" if column == "ratio" else "right")
    for label, slower, target, style in (
        ("node with events / plain pynetdicom", PLAIN, ">= 8x", "{:.1f}x"),
        ("node with events / node without", NO_EVENTS, ">= 0.95", "{:.2f}"),
        ("node with events / dcmtk storescu", STORESCU, "reported", "{:.2f}"),
    ):
        values = paired(times[EVENTS][: len(times[slower])], times[slower])
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
    ratios.add_row(
        "relay CPU per event (us)", f"{statistics.median(relay_cpu) * 1e6:.0f}", "", "reported"
    )
    Console().print(ratios)


if __name__ == "__main__":
    main()
