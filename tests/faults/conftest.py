"""Fixtures of the fault scenarios: a vhost and a rig each, the broker's controls (the
Reliability table's ``report`` fixture is in tests/faults/report.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.broker import Broker, Exec, delete_vhost, new_vhost, node_option
from tests.cluster import cluster, healed_cluster  # noqa: F401 (fixtures: a 3-node cluster)
from tests.faults.rig import Rig, new_rig

pytestmark = pytest.mark.faults


class Vhosts:
    """The scenarios' vhosts: the next one is made, and a used one deleted, in the background
    (a rabbitmqctl run is a second or two, and a vhost takes two)."""

    def __init__(self, broker: Broker, ctl: Exec, worker: ThreadPoolExecutor) -> None:
        self.broker, self.ctl, self.worker = broker, ctl, worker
        self.spare = worker.submit(new_vhost, broker.url, ctl)

    def take(self) -> str:
        """A fresh vhost's URL."""
        try:
            url = self.spare.result()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            url = new_vhost(self.broker.url, self.ctl)  # made while the broker was down
        self.spare = self.worker.submit(new_vhost, self.broker.url, self.ctl)
        return url

    def give_back(self, url: str) -> None:
        """Delete the vhost of ``url``, later."""
        self.worker.submit(delete_vhost, url, self.ctl)

    def close(self) -> None:
        """Delete the spare vhost too."""
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            delete_vhost(self.spare.result(), self.ctl)


@pytest.fixture(scope="session")
def vhosts(broker: Broker) -> Iterator[Vhosts | None]:
    """Vhosts for the scenarios, made ahead of them; none without rabbitmqctl."""
    if broker.ctl is None:
        yield None
        return
    with ThreadPoolExecutor(1, thread_name_prefix="vhosts") as worker:
        made = Vhosts(broker, broker.ctl, worker)
        yield made
        made.close()


@pytest.fixture
def vhost_url(broker: Broker, vhosts: Vhosts | None) -> Iterator[str]:
    """A vhost of its own for one scenario: its log holds only this scenario's events."""
    if vhosts is None:
        yield broker.url
        return
    url = vhosts.take()
    yield url
    vhosts.give_back(url)


@pytest.fixture
def make_rig(tmp_path: Path, vhost_url: str) -> Iterator[Callable[..., Rig]]:
    """Build rigs (``make_rig({"STORESCP": port}, dimse_timeout=5)``); stopped afterwards."""
    rigs: list[Rig] = []

    def make(destinations: dict[str, int], name: str = "rig", **node: Any) -> Rig:
        rig = new_rig(tmp_path / name, vhost_url, destinations, **node)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.stop_all()


class BrokerControl:
    """The local RabbitMQ's own controls: stop and start the app, kill it, alarms.

    The node is the machine's default one, or the one ``RABBITMQ_NODENAME`` names (a private
    node of ``scripts/cluster``, whose environment ``rabbitmq-server`` is started again with).
    """

    def __init__(self, broker: Broker) -> None:
        if shutil.which("rabbitmqctl") is None:
            pytest.fail("the broker fault scenarios need the local rabbitmqctl (make system)")
        port = os.environ.get("RABBITMQ_NODE_PORT")
        if port and urlsplit(broker.url).port != int(port):
            pytest.fail(
                f"RABBITMQ_NODE_PORT is {port} but the tests' broker is {broker.url}: "
                "the scenarios would break one node and watch another (scripts/cluster run)"
            )
        self.broker = broker

    def ctl(self, *argv: str, timeout: float = 120) -> str:
        """Run ``rabbitmqctl argv`` on the broker's node; its output."""
        done = subprocess.run(
            ["rabbitmqctl", *node_option(), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return done.stdout

    def stop_app(self) -> None:
        """``rabbitmqctl stop_app``: the node stays up, the broker application stops."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """``rabbitmqctl start_app``, then wait until it serves."""
        self.ctl("start_app")
        self.ctl("await_startup")

    def vm_pid(self) -> int:
        """The process id of the broker's Erlang VM."""
        return int(self.ctl("eval", "os:getpid().").strip().strip('"'))

    def kill(self, pid: int | None = None) -> None:
        """``kill -9`` the broker's Erlang VM (``pid``: asked for beforehand, so that the kill
        is at once), and return once it is gone."""
        pid = pid or self.vm_pid()
        os.kill(pid, 9)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)

    def start_server(self) -> None:
        """``rabbitmq-server -detached``, then wait until it serves."""
        subprocess.run(["rabbitmq-server", "-detached"], check=True, timeout=60)
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self.ctl("await_startup", timeout=30)
                return
            if time.monotonic() > deadline:
                raise AssertionError("RabbitMQ did not start again within 120 s")
            time.sleep(0.1)  # the node is not up to be asked yet

    def app_state(self) -> str:
        """``running``, ``stopped`` (after stop_app) or ``node down``."""
        try:
            answer = self.ctl("eval", "rabbit:is_running().", timeout=30).strip()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return "node down"
        return "running" if answer == "true" else "stopped"

    def disk_free_limit(self) -> int:
        """The disk free limit in bytes."""
        return int(self.ctl("eval", "rabbit_disk_monitor:get_disk_free_limit().").strip())

    def set_disk_free_limit(self, limit: int | str) -> None:
        """``rabbitmqctl set_disk_free_limit``."""
        self.ctl("set_disk_free_limit", str(limit))

    def disk_alarm(self) -> bool:
        """Whether the disk alarm is set."""
        return "disk" in self.ctl("eval", "rabbit_alarm:get_alarms().")

    async def raise_disk_alarm(self) -> None:
        """Set the disk free limit above the free space; return once the alarm is on.

        The broker's disk monitor notices only at its next check, seconds later.
        """
        self.set_disk_free_limit("100000GB")
        deadline = time.monotonic() + 30
        while not self.disk_alarm():
            assert time.monotonic() < deadline, "the disk alarm did not go on within 30 s"
            await asyncio.sleep(0.2)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: a killed process that its parent has not reaped yet (a zombie,
    state Z; the broker's parent is init, which may reap late) is dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.fixture
def broker_control(broker: Broker) -> Iterator[BrokerControl]:
    """The broker's controls; the broker is running again after the test, whatever it did."""
    control = BrokerControl(broker)
    limit = control.disk_free_limit()
    yield control
    state = control.app_state()
    if state == "node down":
        control.start_server()
    elif state == "stopped":
        control.start_app()
    control.set_disk_free_limit(limit)
