"""A vhost of its own for each demo run, so that two demos never see each other's events.

Every name of the topology is the contract's (``dimsebus.events``, ``dimsebus.audit``,
...), so two demos on one vhost share the work queues: the audit queue keeps what the
first demo's node published after its audit service stopped, and the second demo's
trail holds it. A vhost per run keeps the names and shares nothing.

AMQP cannot create a vhost. The broker's management HTTP API can (the docker compose
image has it, on port 15672, and its guest is an administrator), and so can
``rabbitmqctl`` on the broker's own machine (the local ``rabbitmq-server``). The
run's vhost is kept, so that the demo's "look next" commands can read its log; the
next demo deletes earlier demos' vhosts that are idle (no connection) and at least
``IDLE_AGE`` old.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import shutil
import subprocess
import uuid
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiohttp

log = logging.getLogger(__name__)

PREFIX = "dimsebus-demo-"
STAMP = "%Y%m%d-%H%M%S"
IDLE_AGE = dt.timedelta(minutes=10)
MANAGEMENT_PORT = 15672


class VhostTool(Protocol):
    """A way to create, list and delete vhosts on the broker."""

    name: str

    async def add(self, vhost: str, user: str) -> None:
        """Create ``vhost`` and let ``user`` configure, write and read everything in it."""

    async def names(self) -> list[str]:
        """Every vhost of the broker."""

    async def in_use(self, vhost: str) -> bool:
        """Whether a client is connected to ``vhost``."""

    async def delete(self, vhost: str) -> None:
        """Delete ``vhost`` and everything in it."""


class Rabbitmqctl:
    """``rabbitmqctl`` on this machine (the broker's own: it reads the Erlang cookie)."""

    name = "rabbitmqctl"

    def __init__(self, tool: str) -> None:
        self._tool = tool

    async def _run(self, *argv: str) -> str:
        done = await asyncio.to_thread(
            subprocess.run, [self._tool, *argv], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {argv[0]}: {done.stderr.strip() or done.stdout}")
        return done.stdout

    async def add(self, vhost: str, user: str) -> None:
        """``add_vhost``, then ``set_permissions``."""
        await self._run("add_vhost", vhost)
        await self._run("set_permissions", "-p", vhost, user, ".*", ".*", ".*")

    async def names(self) -> list[str]:
        """``list_vhosts name``."""
        listing = await self._run("list_vhosts", "--quiet", "--no-table-headers", "name")
        return listing.split()

    async def in_use(self, vhost: str) -> bool:
        """A connection's vhost in ``list_connections vhost``."""
        listing = await self._run("list_connections", "--quiet", "--no-table-headers", "vhost")
        return vhost in listing.splitlines()

    async def delete(self, vhost: str) -> None:
        """``delete_vhost``."""
        await self._run("delete_vhost", vhost)


class ManagementApi:
    """The management plugin's HTTP API, as the AMQP URL's user."""

    name = "the management API"

    def __init__(self, host: str, user: str, password: str, port: int = MANAGEMENT_PORT) -> None:
        self._base = f"http://{host}:{port}/api"
        self._auth = aiohttp.BasicAuth(user, password)

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(auth=self._auth, timeout=timeout) as session,
            session.request(method, f"{self._base}/{path}", json=body) as response,
        ):
            if response.status >= 300:
                text = (await response.text()).strip()
                raise RuntimeError(f"{method} /api/{path}: HTTP {response.status} {text[:200]}")
            return await response.json() if response.status == 200 else None

    async def add(self, vhost: str, user: str) -> None:
        """PUT the vhost, then the user's permissions on it."""
        await self._call("PUT", f"vhosts/{_part(vhost)}")
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        await self._call("PUT", f"permissions/{_part(vhost)}/{_part(user)}", everything)

    async def names(self) -> list[str]:
        """GET /api/vhosts."""
        return [str(entry["name"]) for entry in await self._call("GET", "vhosts?columns=name")]

    async def in_use(self, vhost: str) -> bool:
        """GET the vhost's connections."""
        return bool(await self._call("GET", f"vhosts/{_part(vhost)}/connections"))

    async def delete(self, vhost: str) -> None:
        """DELETE the vhost."""
        await self._call("DELETE", f"vhosts/{_part(vhost)}")


def _part(name: str) -> str:
    return quote(name, safe="")


def tools(url: str) -> list[VhostTool]:
    """The ways to make a vhost on the broker of ``url``, the likeliest first."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    found: list[VhostTool] = [
        ManagementApi(host, unquote(parts.username or "guest"), unquote(parts.password or "guest"))
    ]
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is not None and _local(host):
        found.append(Rabbitmqctl(rabbitmqctl))
    return found


def _local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def with_vhost(url: str, vhost: str) -> str:
    """``url`` pointing at ``vhost``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + _part(vhost), parts.query, ""))


def vhost_of(url: str) -> str:
    """The vhost ``url`` names (``/`` when it names none)."""
    return unquote(urlsplit(url).path.removeprefix("/")) or "/"


async def own_vhost(
    url: str, now: dt.datetime, say: Callable[[str], None], tried: list[VhostTool] | None = None
) -> str:
    """``url`` in a new vhost of its own; ``url`` itself (said) when none can be made."""
    vhost = f"{PREFIX}{now:{STAMP}}-{uuid.uuid4().hex[:6]}"
    user = unquote(urlsplit(url).username or "guest")
    problems = []
    for tool in tools(url) if tried is None else tried:
        try:
            await tool.add(vhost, user)
        except Exception as exc:
            problems.append(f"{tool.name}: {exc}")
            continue
        say(f"this demo runs in a vhost of its own, {vhost} (made with {tool.name})")
        await prune(tool, now, keep=vhost)
        return with_vhost(url, vhost)
    say(
        f"no vhost of its own could be made ({'; '.join(problems) or 'no way to make one'}): "
        f"running in vhost {vhost_of(url)!r}, where another demo's events may show"
    )
    return url


async def prune(tool: VhostTool, now: dt.datetime, keep: str) -> list[str]:
    """Delete earlier demos' vhosts that are idle and ``IDLE_AGE`` old; the ones deleted."""
    deleted = []
    try:
        for vhost in await tool.names():
            made = _made_at(vhost)
            if vhost == keep or made is None or now - made < IDLE_AGE:
                continue
            if not await tool.in_use(vhost):
                await tool.delete(vhost)
                deleted.append(vhost)
    except Exception as exc:  # tidying up is no reason to stop a demo
        log.warning("could not delete earlier demos' vhosts with %s: %s", tool.name, exc)
    return deleted


def _made_at(vhost: str) -> dt.datetime | None:
    """When a demo's vhost was made, by its name; None for any other vhost."""
    if not vhost.startswith(PREFIX):
        return None
    stamp = vhost.removeprefix(PREFIX).rsplit("-", 1)[0]
    try:
        return dt.datetime.strptime(stamp, STAMP).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
