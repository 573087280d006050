"""``dimsebus send`` as its own process, the way an operator runs it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path


async def dimsebus_send(tmp_path: Path, port: int, node_id: str, amqp_url: str, *argv: str) -> str:
    """Send ``tmp_path``/study to the storescp on ``port``; its output (exit status 0)."""
    # AMQP_URL (the broker of a test run that sets it) would win over DIMSEBUS_AMQP_URL
    inherited = {key: value for key, value in os.environ.items() if key != "AMQP_URL"}
    env = {**inherited, "DIMSEBUS_AMQP_URL": amqp_url, "DIMSEBUS_NODE_ID": node_id}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "dimsebus.services", "send"),
        *("--to", f"STORESCP@127.0.0.1:{port}", *argv),
        *("--outbox", str(tmp_path / "outbox.sqlite"), str(tmp_path / "study")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, output.decode()
    return output.decode()
