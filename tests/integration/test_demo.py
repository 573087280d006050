"""`dimsebus demo --non-interactive` from the command line, as the README runs it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.integration


async def test_the_demo_completes_after_retries(tmp_path: Path, amqp_url: str) -> None:
    # when the demo runs against the test broker, keeping its page up (--serve)
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "dimsebus.services", "demo", "--non-interactive", "--serve"),
        *("--instances", "80", "--workdir", str(tmp_path / "demo")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "AMQP_URL": amqp_url, "DIMSEBUS_AMQP_URL": amqp_url},
    )
    try:
        output = await _served_then_stopped(process)
    finally:
        if process.returncode is None:  # it failed before Ctrl-C: it would serve for ever
            process.kill()
            await process.wait()
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


async def _served_then_stopped(process: asyncio.subprocess.Process) -> str:
    """What the demo printed: its page read after the summary, then ended with Ctrl-C."""
    assert process.stdout is not None
    output = await asyncio.wait_for(_until(process.stdout, "until Ctrl-C"), 240)
    # then it printed the page's address while the move ran, and serves it after the summary
    page = re.search(r"live while the move runs: (http://127\.0\.0\.1:\d+/)", output)
    assert page is not None, output
    async with (
        aiohttp.ClientSession() as session,
        session.get(page[1], headers={"Accept": "text/html"}) as response,
    ):
        assert response.status == 200
        html = await response.text()
    assert "completed</span>" in html
    # and Ctrl-C ends it with one line and exit status 0
    process.send_signal(signal.SIGINT)
    try:
        rest, _ = await asyncio.wait_for(process.communicate(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        rest = await process.stdout.read()
        stopped = f"the demo did not stop within 30 s of Ctrl-C:\n{rest.decode()}"
        raise AssertionError(stopped) from None
    assert rest.decode().strip() == "stopped serving the moves page"
    return output + rest.decode()


async def _until(stream: asyncio.StreamReader, text: str) -> str:
    """What ``stream`` printed up to the line holding ``text``, or to its end."""
    output = ""
    while line := (await stream.readline()).decode():
        output += line
        if text in line:
            break
    return output
