"""Finding the RabbitMQ broker for tests, and giving each test run its own vhost.

Order (issue #2): ``AMQP_URL`` when set; else testcontainers' RabbitMQ when a
Docker engine answers; else the local broker at 127.0.0.1:5672. A broker that
does not answer fails the run: these tests are never skipped.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/"
Exec = Callable[[list[str]], None]


def docker_answers() -> bool:
    """True when a Docker engine answers a ping within two seconds."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        return bool(client.ping())
    except Exception:
        return False


@contextlib.contextmanager
def rabbitmq_container() -> Iterator[tuple[str, Exec]]:
    """A throw-away RabbitMQ in Docker: its URL and a way to run rabbitmqctl in it."""
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13-management") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)

        def run(argv: list[str]) -> None:
            code, output = container.exec(argv)
            if code != 0:
                raise RuntimeError(f"{argv} failed in the container: {output!r}")

        yield f"amqp://guest:guest@{host}:{port}/", run


def local_rabbitmqctl() -> Exec | None:
    """Run rabbitmqctl on this machine, when it is installed and the broker is local."""
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        return None

    def run(argv: list[str]) -> None:
        subprocess.run([tool, *argv[1:]], check=True, capture_output=True, timeout=60)

    return run


def with_vhost(url: str, vhost: str) -> str:
    """``url`` pointing at ``vhost`` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))


@contextlib.contextmanager
def private_vhost(url: str, ctl: Exec | None) -> Iterator[str]:
    """A fresh vhost for this run, deleted afterwards; ``url`` itself when none can be made."""
    if ctl is None:
        yield url
        return
    vhost = f"dimsebus-test-{uuid.uuid4().hex[:8]}"
    user = urlsplit(url).username or "guest"
    ctl(["rabbitmqctl", "add_vhost", vhost])
    ctl(["rabbitmqctl", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"])
    try:
        yield with_vhost(url, vhost)
    finally:
        ctl(["rabbitmqctl", "delete_vhost", vhost])
