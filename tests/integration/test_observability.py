"""Each service's /metrics, scraped before and after traffic, /healthz, and the tracker's API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dimsebus.services.audit.app import AuditSettings, run_audit
from dimsebus.services.retrier.app import RetrierSettings, run_retrier
from dimsebus.services.retrier.policy import RetryPolicy
from tests.integration.conftest import (
    RunningNode,
    Services,
    movescu,
    of_type,
    read_events,
    settled,
)
from tests.integration.peers import free_port, make_room, small_filesystem, storescp

pytestmark = pytest.mark.integration


@dataclass
class Downstream:
    """A retrier and an audit service, each with its HTTP port; the retrier can restart."""

    ports: dict[str, int]
    retrier: RetrierSettings
    services: Services
    stop_retrier: asyncio.Event

    async def restart_retrier(self, between: Callable[[], Awaitable[object]]) -> None:
        """Stop the retrier, await ``between()`` (failures wait in its queue), start it."""
        await self.services.stop(self.stop_retrier)
        await between()
        self.stop_retrier = await self.services.start(run_retrier, self.retrier)


@pytest.fixture
async def retrier_and_audit(tmp_path: Path, amqp_url: str, services: Services) -> Downstream:
    """A retrier (retries due in 50 ms) and an audit service, each with its HTTP port."""
    ports = {"retrier": free_port(), "audit": free_port()}
    retrier = RetrierSettings(
        amqp_url=amqp_url,
        db=tmp_path / "retrier.sqlite",
        http_port=ports["retrier"],
        policy=RetryPolicy(initial_delay=0.05, multiplier=1.0, jitter=0.0),
    )
    audit = AuditSettings(
        amqp_url=amqp_url, db=str(tmp_path / "audit.sqlite"), http_port=ports["audit"]
    )
    stop = await services.start(run_retrier, retrier)
    await services.start(run_audit, audit)
    return Downstream(ports, retrier, services, stop)


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """Every sample of /metrics, by name and labels."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def grew(before: dict[str, float], after: dict[str, float], name: str, by: float = 1) -> bool:
    return after.get(name, 0.0) - before.get(name, 0.0) >= by


GROWTH = {
    "node": {
        "dimsebus_cstore_responses_total{category=success}": 10,
        "dimsebus_cstore_responses_total{category=failure}": 5,
        "dimsebus_cstore_round_trip_seconds_count{}": 15,
        "dimsebus_outbox_published_total{}": 15,
        "dimsebus_resend_commands_total{}": 5,
        "dimsebus_outbox_confirm_seconds_count{}": 15,
    },
    "tracker": {"dimsebus_tracker_events_applied_total{}": 15},
    "retrier": {
        "dimsebus_retries_total{decision=scheduled}": 5,
        "dimsebus_events_published_total{}": 5,
    },
    "audit": {"dimsebus_audit_records_total{}": 20},
}
"""How much each service's counters must grow with the move (by name and labels)."""

Samples = dict[str, dict[str, float]]


def short_of(before: Samples, after: Samples) -> list[str]:
    """The counters of ``GROWTH`` that have not grown enough yet, with their growth."""
    return [
        f"{service} {name}: {after[service].get(name, 0.0) - before[service].get(name, 0.0)}"
        f" (not {by})"
        for service, counters in GROWTH.items()
        for name, by in counters.items()
        if not grew(before[service], after[service], name, by)
    ]


async def counted(
    session: aiohttp.ClientSession, ports: dict[str, int], before: Samples, within: float = 30
) -> Samples:
    """Every service's samples once the counters of ``GROWTH`` have grown (the node's relay
    reports its counts after each batch, the audit service records after the tracker), or
    as they are after ``within`` s."""
    after: Samples = {}
    with contextlib.suppress(TimeoutError):  # the caller's assertion names what is short
        async with asyncio.timeout(within):
            while True:
                after = {name: await scrape(session, port) for name, port in ports.items()}
                if not short_of(before, after):
                    break
                await asyncio.sleep(0.1)
    return after


async def test_metrics_move_with_the_traffic(
    tmp_path: Path,
    amqp_url: str,
    start_node: Any,
    start_tracker: Any,
    retrier_and_audit: Downstream,
) -> None:
    # given every service with its HTTP side on, and a destination with room for 5 of 10
    downstream = retrier_and_audit
    ports = dict(downstream.ports, node=free_port(), tracker=free_port())
    tracker = await start_tracker(http_port=ports["tracker"])
    with small_filesystem(tmp_path / "full", files=5) as folder, storescp(folder) as peer:
        node: RunningNode = await start_node(
            instances=10, destinations={"STORESCP": peer.port}, http_port=ports["node"]
        )
        async with aiohttp.ClientSession() as session:
            before = {name: await scrape(session, port) for name, port in ports.items()}

            # when a move runs, 5 sub-operations are refused, and retries complete it
            # (the retrier is stopped while the move runs, and starts once room is made)
            async def move_and_make_room() -> None:
                await movescu(node, "STORESCP")
                await read_events(
                    amqp_url,
                    node.source,
                    lambda found: bool(of_type(found, "dicom.move.completed")),
                )
                await asyncio.to_thread(make_room, folder)

            await downstream.restart_retrier(move_and_make_room)
            move = await settled(tracker.db, node, "completed", within=60)
            after = await counted(session, ports, before)
            health = {}
            for name, port in ports.items():
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    health[name] = (response.status, await response.json())
            base = f"http://127.0.0.1:{ports['tracker']}"
            async with session.get(f"{base}/moves/{move['move_id'][:13]}") as response:
                shown = (response.status, await response.json())
            async with session.get(f"{base}/moves?outcome=completed") as response:
                listed = await response.json()
            async with session.get(f"{base}/moves/ffffffff") as response:
                missing = response.status
            async with session.get(f"{base}/openapi.json") as response:
                openapi = await response.json()
    # then each service's counters moved with the traffic
    assert not short_of(before, after), short_of(before, after)
    assert after["node"]["dimsebus_outbox_depth{}"] >= 0
    assert "dimsebus_moves_in_progress{}" in after["tracker"]
    assert "dimsebus_audit_spool_depth{}" in after["audit"]
    # and every service says it is healthy
    assert {name: status for name, (status, _) in health.items()} == dict.fromkeys(ports, 200)
    # and the tracker's API shows the move, and documents itself
    assert shown[0] == 200
    assert shown[1]["counts"]["completed"] == 10
    assert move["move_id"] in [m["move_id"] for m in listed]
    assert missing == 404
    assert set(openapi["paths"]) == {"/moves", "/moves/{move_id}"}
