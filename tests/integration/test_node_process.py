"""The node as operators run it: `archive import`, `node`, `node status`, and kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dimsebus.services.node.synthetic import write_study
from tests.integration.conftest import of_type, read_events
from tests.integration.peers import dcmtk, free_port, run_tool, storescp, wait_for_port

pytestmark = pytest.mark.integration
UNREACHABLE = "amqp://guest:guest@127.0.0.1:1/"
INHERITED = {key: value for key, value in os.environ.items() if key != "AMQP_URL"}
"""The environment without AMQP_URL (a test run's broker), which would win over the config."""


def dimsebus(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dimsebus.services", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**INHERITED, **(env or {})},
    )


@pytest.fixture
def config(tmp_path: Path) -> Iterator[tuple[Path, str, int, int]]:
    """A node config whose broker does not answer, and a storescp it knows as STORESCP."""
    node_id = f"proc-{uuid.uuid4().hex[:8]}"
    port = free_port()
    with storescp(tmp_path / "received") as peer:
        path = tmp_path / "node.toml"
        path.write_text(
            f'node_id = "{node_id}"\nport = {port}\nhost = "127.0.0.1"\n'
            f'archive_path = "{tmp_path / "archive"}"\n'
            f'outbox_path = "{tmp_path / "outbox.sqlite"}"\n'
            f'amqp_url = "{UNREACHABLE}"\n\n'
            f'[destinations.STORESCP]\nhost = "127.0.0.1"\nport = {peer.port}\n\n'
            '[peers.MOVESCU]\nhost = "127.0.0.1"\nallow = ["echo", "move"]\n'
        )
        yield path, node_id, port, peer.port


def start(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dimsebus.services", "node", "--config", str(config)],
        env={**INHERITED, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_kill_9_then_restart_publishes_the_spooled_events_with_their_ids(
    tmp_path: Path, amqp_url: str, config: tuple[Path, str, int, int]
) -> None:
    path, node_id, port, _ = config
    # given a node with 10 instances, whose broker is unreachable
    write_study(tmp_path / "study", 10, seed=node_id)
    imported = dimsebus("archive", "import", "--config", str(path), str(tmp_path / "study"))
    assert imported.returncode == 0, imported.stderr
    assert "imported 10 of 10 files" in imported.stdout
    node = start(path)
    try:
        await asyncio.to_thread(wait_for_port, port)
        # when a C-MOVE runs through it, its events wait in the outbox
        study_uid = _study_uid(tmp_path / "archive" / "index.sqlite")
        await run_tool(
            dcmtk("movescu"),
            "-S",
            "-aet",
            "MOVESCU",
            "-aec",
            "DIMSEBUS",
            "-aem",
            "STORESCP",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "127.0.0.1",
            str(port),
        )
        status = dimsebus("node", "--config", str(path), "status", "--json")
        assert status.returncode == 0, status.stderr
        spooled = _outbox_ids(tmp_path / "outbox.sqlite")
        assert len(spooled) >= 13  # 2 associations established, move requested, 10 responses, ...
        assert json.loads(status.stdout)["outbox_depth"] == len(spooled)
        # and the node is killed without a chance to clean up
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait(10)
    # when it restarts with a reachable broker (DIMSEBUS_AMQP_URL overrides the file)
    restarted = start(path, env={"DIMSEBUS_AMQP_URL": amqp_url})
    try:
        events = await read_events(
            amqp_url,
            f"dimsebus://node/{node_id}",
            lambda found: {str(e.id) for e in found} >= spooled,
            within=60,
        )
    finally:
        restarted.terminate()
        restarted.wait(20)
    # then every spooled event is on the log with the id it had before the crash
    assert {str(e.id) for e in events} >= spooled
    assert len(of_type(events, "dicom.cstore.response.received")) == 10
    assert _outbox_ids(tmp_path / "outbox.sqlite") == set()


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('port = 70000\nae_title = "WAY_TOO_LONG_AE_TITLE"\n')
    result = dimsebus("node", "--config", str(path))
    assert result.returncode == 2
    assert "port" in result.stderr
    assert "70000" in result.stderr
    assert "'WAY_TOO_LONG_AE_TITLE' is not a valid AE title" in result.stderr


def test_send_with_a_bad_target_names_it(tmp_path: Path) -> None:
    result = dimsebus("send", "--to", "STORESCP@localhost", str(tmp_path))
    assert result.returncode == 2
    assert "--to: 'STORESCP@localhost' is not AE@HOST:PORT" in result.stderr


def _study_uid(index: Path) -> str:
    with sqlite3.connect(index) as db:
        return str(db.execute("SELECT study_instance_uid FROM instances LIMIT 1").fetchone()[0])


def _outbox_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT event_id FROM outbox")}
