"""Finding the RabbitMQ broker for tests, and giving each test run its own vhost.

Order (issue #2): ``AMQP_URL`` when set; else testcontainers' RabbitMQ when a
Docker engine answers; else the local broker at 127.0.0.1:5672. A broker that
does not answer fails the run: these tests are never skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/"
Exec = Callable[[list[str]], str]


def docker_answers() -> bool:
    """True when a Docker engine answers a ping within two seconds.

    Without an engine's socket there is nothing to ask: docker-py would leave the
    socket of its failed connection open (a ResourceWarning in every run).
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=2)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def rabbitmq_container() -> Iterator[tuple[str, Exec]]:
    """A throw-away RabbitMQ in Docker: its URL and a way to run rabbitmqctl in it."""
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13-management").with_exposed_ports(5552) as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)

        def run(argv: list[str]) -> str:
            code, output = container.exec(argv)
            if code != 0:
                raise RuntimeError(f"{argv} failed in the container: {output!r}")
            return output.decode()  # type: ignore[no-any-return]

        # The tracker reads the log over the stream protocol, on the port Docker mapped
        # 5552 to: this process's trackers, and those it starts, read the setting.
        run(["rabbitmq-plugins", "enable", "rabbitmq_stream"])
        os.environ["DIMSEBUS_STREAM_PORT"] = str(container.get_exposed_port(5552))
        yield f"amqp://guest:guest@{host}:{port}/", run


def node_option() -> list[str]:
    """``-n NODE`` for rabbitmqctl when ``RABBITMQ_NODENAME`` names a private node (as
    ``scripts/cluster run`` sets it); nothing for the machine's default node."""
    node = os.environ.get("RABBITMQ_NODENAME")
    return ["-n", node] if node else []


def local_rabbitmqctl() -> Exec | None:
    """Run rabbitmqctl on this machine, when it is installed and the broker is local."""
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        return None

    def run(argv: list[str]) -> str:
        done = subprocess.run(
            [tool, *node_option(), *argv[1:]], check=True, capture_output=True, timeout=60
        )
        return done.stdout.decode()

    return run


def with_vhost(url: str, vhost: str) -> str:
    """``url`` pointing at ``vhost`` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))


@dataclass(frozen=True)
class Broker:
    """The broker under test: its URL (a private vhost) and rabbitmqctl, when reachable."""

    url: str
    ctl: Exec | None

    @property
    def vhost(self) -> str:
        """The vhost the URL points at."""
        return unquote(urlsplit(self.url).path.removeprefix("/")) or "/"

    def connection_names(self) -> set[str]:
        """The names of the client connections to this vhost (``rabbitmqctl list_connections``)."""
        if self.ctl is None:
            raise RuntimeError("listing connections needs rabbitmqctl or a testcontainer")
        listing = self.ctl(
            [
                "rabbitmqctl",
                "list_connections",
                "-q",
                "--no-table-headers",
                "vhost",
                "client_properties",
            ]
        )
        return {
            name
            for vhost, properties in (line.split("\t", 1) for line in listing.splitlines() if line)
            if vhost == self.vhost
            for name in re.findall(r'\{"connection_name","([^"]*)"\}', properties)
        }

    def close_all_connections(self) -> None:
        """Force-close every connection to this vhost (one ``rabbitmqctl`` run)."""
        if self.ctl is None:
            raise RuntimeError("closing connections needs rabbitmqctl or a testcontainer")
        self.ctl(
            ["rabbitmqctl", "close_all_connections", "-p", self.vhost, "closed by a dimsebus test"]
        )

    def close_connections(self, name: str) -> int:
        """Force-close (``rabbitmqctl close_connection``) every connection called ``name``."""
        if self.ctl is None:
            raise RuntimeError("closing connections needs rabbitmqctl or a testcontainer")
        # The table form, not JSON: close_connection takes the pid as the table prints it.
        listing = self.ctl(
            [
                "rabbitmqctl",
                "list_connections",
                "-q",
                "--no-table-headers",
                "pid",
                "vhost",
                "client_properties",
            ]
        )
        marker = f'{{"connection_name","{name}"}}'
        pids = [
            pid
            for pid, vhost, properties in (
                line.split("\t", 2) for line in listing.splitlines() if line
            )
            if vhost == self.vhost and marker in properties
        ]
        for pid in pids:
            self.ctl(["rabbitmqctl", "close_connection", pid, "closed by a dimsebus test"])
        return len(pids)


@contextlib.contextmanager
def private_vhost(url: str, ctl: Exec | None) -> Iterator[str]:
    """A fresh vhost for this run, deleted afterwards; ``url`` itself when none can be made."""
    if ctl is None:
        yield url
        return
    made = new_vhost(url, ctl)
    try:
        yield made
    finally:
        delete_vhost(made, ctl)


def new_vhost(url: str, ctl: Exec) -> str:
    """``url`` pointing at a fresh vhost that its user may use."""
    vhost = f"dimsebus-test-{uuid.uuid4().hex[:8]}"
    user = urlsplit(url).username or "guest"
    ctl(["rabbitmqctl", "add_vhost", vhost])
    ctl(["rabbitmqctl", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"])
    return with_vhost(url, vhost)


def delete_vhost(url: str, ctl: Exec) -> None:
    """Delete the vhost ``url`` points at."""
    vhost = unquote(urlsplit(url).path.removeprefix("/"))
    ctl(["rabbitmqctl", "delete_vhost", vhost])
