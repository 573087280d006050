"""`dimsebus demo --non-interactive` from the command line, as the README runs it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


async def test_the_demo_completes_after_retries(tmp_path: Path, amqp_url: str) -> None:
    # when the demo runs against the test broker
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "dimsebus.services", "demo", "--non-interactive"),
        *("--instances", "80", "--workdir", str(tmp_path / "demo")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "AMQP_URL": amqp_url, "DIMSEBUS_AMQP_URL": amqp_url},
    )
    output_bytes, _ = await asyncio.wait_for(process.communicate(), 240)
    output = output_bytes.decode()
    # then it exits 0 with a summary: failures on the first attempt, retries, outcome, audit
    assert process.returncode == 0, output
    lines = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in output.splitlines()
        if line.count("│") == 3
    }
    assert lines["sub-operations"].startswith("80 instances")
    assert "refused with 0xA700" in lines["first attempt"]
    assert "one association aborted" in lines["first attempt"]
    assert int(lines["retries"].split()[0]) > 0
    assert lines["outcome"] == "completed"
    assert lines["final counts"] == "remaining 0, completed 80, failed 0, warning 0"
    assert lines["audit chain"].startswith("OK,")
    assert lines["destination holds"] == "80 instances"
    assert "dimsebus moves show" in output
