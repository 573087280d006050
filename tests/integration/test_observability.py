"""Each service's /metrics, scraped before and after traffic, /healthz, and the tracker's API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.audit.app import AuditSettings, run_audit
from services.retrier.app import RetrierSettings, run_retrier
from services.retrier.policy import RetryPolicy
from tests.integration.conftest import RunningNode, Services, movescu, settled
from tests.integration.peers import free_port, make_room, small_filesystem, storescp

pytestmark = pytest.mark.integration


@pytest.fixture
async def retrier_and_audit(tmp_path: Path, amqp_url: str, services: Services) -> dict[str, int]:
    """A retrier and an audit service, each with its HTTP port."""
    ports = {"retrier": free_port(), "audit": free_port()}
    retrier = RetrierSettings(
        amqp_url=amqp_url,
        db=tmp_path / "retrier.sqlite",
        http_port=ports["retrier"],
        policy=RetryPolicy(initial_delay=2.0, multiplier=1.0, jitter=0.0),
    )
    audit = AuditSettings(
        amqp_url=amqp_url, db=str(tmp_path / "audit.sqlite"), http_port=ports["audit"]
    )
    await services.start(run_retrier, retrier)
    await services.start(run_audit, audit)
    return ports


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


async def test_metrics_move_with_the_traffic(
    tmp_path: Path,
    start_node: Any,
    start_tracker: Any,
    retrier_and_audit: dict[str, int],
) -> None:
    # given every service with its HTTP side on, and a destination with room for 5 of 10
    ports = dict(retrier_and_audit, node=free_port(), tracker=free_port())
    tracker = await start_tracker(http_port=ports["tracker"])
    with small_filesystem(tmp_path / "full", files=5) as folder, storescp(folder) as peer:
        node: RunningNode = await start_node(
            instances=10, destinations={"STORESCP": peer.port}, http_port=ports["node"]
        )
        async with aiohttp.ClientSession() as session:
            before = {name: await scrape(session, port) for name, port in ports.items()}
            # when a move runs, 5 sub-operations are refused, and retries complete it
            await movescu(node, "STORESCP")
            await asyncio.sleep(1)
            await asyncio.to_thread(make_room, folder)
            move = await settled(tracker.db, node, "completed", within=60)
            await asyncio.sleep(2)  # a relay reports its counts after each batch
            after = {name: await scrape(session, port) for name, port in ports.items()}
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
    node_before, node_after = before["node"], after["node"]
    assert grew(node_before, node_after, "dimsebus_cstore_responses_total{category=success}", 10)
    assert grew(node_before, node_after, "dimsebus_cstore_responses_total{category=failure}", 5)
    assert grew(node_before, node_after, "dimsebus_cstore_round_trip_seconds_count{}", 15)
    assert grew(node_before, node_after, "dimsebus_outbox_published_total{}", 15)
    assert grew(node_before, node_after, "dimsebus_resend_commands_total{}", 5)
    assert node_after["dimsebus_outbox_depth{}"] >= 0
    assert node_after["dimsebus_outbox_confirm_seconds_count{}"] >= 15
    assert grew(before["tracker"], after["tracker"], "dimsebus_tracker_events_applied_total{}", 15)
    assert "dimsebus_moves_in_progress{}" in after["tracker"]
    retrier = "dimsebus_retries_total{decision=scheduled}"
    assert grew(before["retrier"], after["retrier"], retrier, 5)
    assert grew(before["retrier"], after["retrier"], "dimsebus_events_published_total{}", 5)
    assert grew(before["audit"], after["audit"], "dimsebus_audit_records_total{}", 20)
    assert "dimsebus_audit_spool_depth{}" in after["audit"]
    # and every service says it is healthy
    assert {name: status for name, (status, _) in health.items()} == dict.fromkeys(ports, 200)
    # and the tracker's API shows the move, and documents itself
    assert shown[0] == 200
    assert shown[1]["counts"]["completed"] == 10
    assert move["move_id"] in [m["move_id"] for m in listed]
    assert missing == 404
    assert set(openapi["paths"]) == {"/moves", "/moves/{move_id}"}
