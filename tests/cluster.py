"""A private three-node RabbitMQ cluster for the tests that need one (issue 22).

``cluster`` is a session-scoped pytest fixture. It starts its own nodes with
``scripts/cluster up 3`` under ``CLUSTER_PREFIX=dimsebus-ha``, ``CLUSTER_PORT=5691`` and
``CLUSTER_DIR=/tmp/dimsebus-ha`` (nodes ``dimsebus-ha-1..3@localhost``, AMQP on
127.0.0.1:5691-5693), so it never clashes with ``make faults-private`` (``dimsebus-1`` on
5681) nor with the machine's broker on 5672, and stops them (``scripts/cluster down``
with the same environment: only these nodes) when the session ends. A cluster that
cannot be started fails the tests that asked for it; they are never skipped.

To use it, import the fixture into a conftest or a test module::

    from tests.cluster import Cluster, cluster  # noqa: F401  (the fixture)

    async def test_x(cluster: Cluster) -> None:
        url = cluster.new_vhost()            # every node's URL of a fresh vhost, comma-separated
        ...
        cluster.kill(2, cluster.vm_pid(2))   # kill -9 of node 2's VM
        cluster.heal()                       # every node up and in the cluster again

A test that stops, kills or breaks a node leaves it so: call ``heal()`` when it is done
(the fixture ``healed_cluster`` does it after each test), so that the next test finds
three running nodes. Node numbers are 1-based, as in scripts/cluster.

Under xdist each worker is a session of its own: the sessions that use the cluster share
it (a file lock and one file per session under ``/tmp/dimsebus-ha.sessions``; the last to
end stops it), but they do not take turns. ``make test`` runs a file's tests on one worker
(``--dist loadfile``), so scenarios that kill or stop nodes belong in one file
(tests/faults/test_cluster.py) to run one after another.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cluster"
ENVIRONMENT = {
    "CLUSTER_PREFIX": "dimsebus-ha",
    "CLUSTER_PORT": "5691",
    "CLUSTER_DIR": "/tmp/dimsebus-ha",
}
NODES = 3
SESSIONS = Path("/tmp/dimsebus-ha.sessions")
"""One file per test session (its pid) using the cluster; the lock file beside it."""
# What scripts/cluster sets for one node: never inherited from a `scripts/cluster run`.
_NODE_VARIABLES = ("RABBITMQ_", "AMQP_URL", "DIMSEBUS_AMQP_URL")


def _environment() -> dict[str, str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_NODE_VARIABLES) and name not in ENVIRONMENT
    }
    return {**inherited, **ENVIRONMENT}


def cluster_script(*argv: str, timeout: float = 300) -> str:
    """Run ``scripts/cluster argv`` for the test cluster; its standard output."""
    done = subprocess.run(
        [str(SCRIPT), *argv],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"scripts/cluster {' '.join(argv)} failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done.stdout


@dataclass(frozen=True)
class Cluster:
    """The test cluster: its nodes' AMQP ports, and rabbitmqctl on each node."""

    ports: tuple[int, ...]
    started_in: float  # seconds `scripts/cluster up` took for this session

    def url(self, node: int, vhost: str = "/") -> str:
        """Node ``node``'s AMQP URL for ``vhost`` (guest may use it on loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.ports[node - 1]}/{quote(vhost, safe='')}"

    def urls(self, vhost: str = "/", order: Sequence[int] | None = None) -> str:
        """Every node's URL for ``vhost``, comma-separated, in ``order`` (default 1..N)."""
        return ",".join(self.url(node, vhost) for node in order or range(1, len(self.ports) + 1))

    def node_of(self, port: int) -> int:
        """The node that listens on AMQP ``port``."""
        return self.ports.index(port) + 1

    def ctl(self, node: int, *argv: str, timeout: float = 120) -> str:
        """``rabbitmqctl -q argv`` on node ``node``; its output."""
        return cluster_script("run", str(node), "--", "rabbitmqctl", "-q", *argv, timeout=timeout)

    def new_vhost(self, order: Sequence[int] | None = None) -> str:
        """A fresh vhost that guest may use; every node's URL of it, comma-separated."""
        vhost = f"dimsebus-ha-{uuid.uuid4().hex[:8]}"
        self.ctl(1, "add_vhost", vhost)
        self.ctl(1, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return self.urls(vhost, order)

    def delete_vhost(self, vhost: str) -> None:
        """Delete ``vhost`` (through the first node that runs). Tests need not: the cluster and
        its data go when the session ends."""
        self.ctl(self.running()[0], "delete_vhost", vhost)

    def members(self, vhost: str) -> dict[str, list[str]]:
        """Each queue of ``vhost`` (quorum queue or stream) and the nodes that hold a replica."""
        listing = self.ctl(
            self.running()[0], "list_queues", "-p", vhost, "--no-table-headers", "name", "members"
        )
        found = {}
        for line in listing.splitlines():
            name, _, members = line.partition("\t")
            found[name] = re.findall(r"[\w.-]+@[\w.-]+", members)
        return found

    def connections(self, vhost: str) -> list[tuple[str, int]]:
        """Each client connection to ``vhost``: its name and the node port it is connected to."""
        listing = self.ctl(
            self.running()[0],
            "list_connections",
            "--no-table-headers",
            "vhost",
            "port",
            "client_properties",
        )
        found = []
        for line in listing.splitlines():
            parts = line.split("\t", 2)
            if len(parts) == 3 and parts[0] == vhost:
                names = re.findall(r'\{"connection_name","([^"]*)"\}', parts[2])
                found += [(name, int(parts[1])) for name in names]
        return found

    def vm_pid(self, node: int) -> int:
        """The process id of node ``node``'s Erlang VM."""
        return int(self.ctl(node, "eval", "os:getpid().").strip().strip('"'))

    def kill(self, node: int, pid: int | None = None) -> None:
        """``kill -9`` node ``node``'s VM (``pid`` asked for beforehand: at once); return once
        it is gone."""
        pid = pid or self.vm_pid(node)
        os.kill(pid, 9)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)

    def stop_app(self, node: int) -> None:
        """``rabbitmqctl stop_app`` on node ``node``: the VM stays, the broker stops."""
        self.ctl(node, "stop_app")

    def running(self) -> list[int]:
        """The nodes whose broker answers on its AMQP port."""
        return [node for node, port in enumerate(self.ports, 1) if _answers(port)]

    def heal(self) -> None:
        """Every node running and in the cluster again (``scripts/cluster up``: nodes that
        answer are left alone, a killed one is started, a stopped app started)."""
        for node in range(1, len(self.ports) + 1):
            if _answers(self.ports[node - 1]):
                continue
            # the VM runs and its app was stopped; if the VM is gone, scripts/cluster starts it
            with contextlib.suppress(RuntimeError):
                self.ctl(node, "start_app", timeout=60)
        cluster_script("up", str(len(self.ports)))


def _answers(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_cluster(nodes: int = NODES) -> Cluster:
    """Start (or find running) the test cluster of ``nodes`` nodes; fail if it cannot."""
    started = time.monotonic()
    printed = cluster_script("up", str(nodes))
    ports = tuple(int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)/", printed))
    if len(ports) != nodes:
        raise RuntimeError(f"scripts/cluster up {nodes} printed {printed!r}")
    return Cluster(ports, time.monotonic() - started)


@contextlib.contextmanager
def _sessions() -> Iterator[set[int]]:
    """The pids of the live sessions using the cluster, under the lock (this one's included
    by whoever adds it)."""
    SESSIONS.mkdir(exist_ok=True)
    with (SESSIONS.parent / f"{SESSIONS.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for entry in SESSIONS.iterdir():
            if not _alive(int(entry.name)):
                entry.unlink()  # a session that died without stopping
        yield {int(entry.name) for entry in SESSIONS.iterdir()}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Three private RabbitMQ nodes in one cluster for the session, stopped at its end (by
    the last session using them, under xdist)."""
    mine = SESSIONS / str(os.getpid())
    with _sessions() as others:
        mine.touch()
        try:
            made = start_cluster()
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            mine.unlink()
            if not others:
                cluster_script_down()  # what did start
            pytest.fail(f"the test cluster did not start: {exc}", pytrace=False)
    try:
        yield made
    finally:
        with _sessions() as others:
            mine.unlink(missing_ok=True)
            if others <= {os.getpid()}:
                cluster_script_down()


def cluster_script_down() -> None:
    """Stop the test cluster's nodes and remove their data (never anyone else's nodes)."""
    try:
        cluster_script("down", timeout=180)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"stopping the test cluster: {exc}")  # teardown has no other voice


@pytest.fixture
def healed_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, with every node running and joined again after the test."""
    yield cluster
    cluster.heal()
