"""Every metric the Grafana dashboard's queries name is exported by a running service.

The node, the tracker, the retrier and the audit service run as processes of their own
(``tests/faults/rig.py``), each with its /metrics, in a vhost of their own. After a move
whose destination refuses some instances (retried, then given up) and a poison message
that the consumers park, every service's /metrics is scraped, and each metric name the
dashboard's PromQL selects must be a series with samples in one of them; the series
under ``histogram_quantile`` must be a histogram's ``_bucket``.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from functools import partial
from pathlib import Path

import aio_pika
import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.topology import EVENTS_EXCHANGE
from tests.broker import Broker, private_vhost
from tests.dashboard import histogram_quantile_series, load, metric_names, queries
from tests.faults.rig import READY, Rig, new_rig, until_true
from tests.integration.peers import answering_scp, free_port

pytestmark = pytest.mark.integration
SERVICES = ("node", "tracker", "retrier", "audit")
INSTANCES = 20


def status_for(sop_instance_uid: str) -> int:
    """One instance in four refused (out of resources: retried, then given up), one in
    four stored with a warning (coercion of data elements), the rest stored."""
    return (0xA700, 0xB000, 0x0000, 0x0000)[zlib.crc32(sop_instance_uid.encode()) % 4]


Exported = dict[str, tuple[str, set[str]]]
"""Sample name -> (its family's type, the services whose /metrics have a sample of it)."""


async def scrape_all(session: aiohttp.ClientSession, ports: dict[str, int]) -> Exported:
    """Every sample name in the services' /metrics, with its type and who exports it."""
    exported: Exported = {}
    for service, port in ports.items():
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200, service
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                _, services = exported.setdefault(sample.name, (family.type, set()))
                services.add(service)
    return exported


def unexported(exported: Exported) -> list[str]:
    """What the dashboard asks for that no service exports: one line per metric and panel."""
    problems = []
    for title, expr in queries(load()):
        for name in sorted(metric_names(expr)):
            if name not in exported:
                problems.append(f"{title}: {name} is exported by no service")
        for name in sorted(histogram_quantile_series(expr)):
            kind = exported.get(name, ("absent", set()))[0]
            if not name.endswith("_bucket") or kind != "histogram":
                problems.append(f"{title}: histogram_quantile over {name} ({kind})")
    return problems


async def start_with_http(rig: Rig, ports: dict[str, int]) -> None:
    """The tracker, the retrier and the audit service, each with its HTTP port, consuming."""
    for name in ("tracker", "retrier", "audit"):
        config = str(rig.root / f"{name}.toml")
        rig.service(name, name, "--config", config, "--http-port", str(ports[name]))
    for name in ("tracker", "retrier", "audit"):
        process = rig.processes[name]
        await until_true(partial(process.said, READY[name]), 60, f"{name} to consume")


async def publish_poison(url: str) -> None:
    """A message that is not JSON, where the retrier's and the audit's queues take it."""
    connection = await connect(url, "dimsebus-tests-poisoner")
    async with connection:
        channel = await confirming_channel(connection)
        events = await channel.get_exchange(EVENTS_EXCHANGE)
        message = aio_pika.Message(b'{"specversion": "1.0", "id": ', message_id="poison")
        await events.publish(message, "dicom.cstore.response.received.failure", mandatory=True)


async def test_every_metric_of_the_dashboard_is_exported_by_a_running_service(
    tmp_path: Path, broker: Broker
) -> None:
    ports = {name: free_port() for name in SERVICES}
    with (
        private_vhost(broker.url, broker.ctl) as url,
        answering_scp(status_for, ae_title="ODDSCP") as peer_port,
    ):
        # given every service as a process with its /metrics, retrying twice at most
        rig = new_rig(
            tmp_path / "rig",
            url,
            {"ODDSCP": peer_port},
            {"max_attempts": 2},
            http_port=ports["node"],
        )
        try:
            study = rig.add_study(INSTANCES, seed="dashboard")
            await start_with_http(rig, ports)
            await rig.start_node()
            # when a move runs with refusals, warnings and retries, and poison is parked
            await rig.movescu(study, "ODDSCP")
            await publish_poison(url)
            await rig.settled(("completed_with_failures",), within=180)
            # then every metric the dashboard reads has samples on some service's /metrics
            exported: Exported = {}
            deadline = time.monotonic() + 60
            async with aiohttp.ClientSession() as session:
                while time.monotonic() < deadline:
                    exported = await scrape_all(session, ports)
                    if not unexported(exported):
                        break
                    await asyncio.sleep(0.5)  # the relays report their counts per batch
        finally:
            rig.stop_all()
    assert not unexported(exported), "\n".join(unexported(exported))
    # and the traffic the dashboard is about was really counted, by the service it expects
    assert "node" in exported["dimsebus_cstore_round_trip_seconds_bucket"][1]
    assert "retrier" in exported["dimsebus_retries_total"][1]
    assert exported["dimsebus_messages_parked_total"][1] >= {"retrier", "audit"}
