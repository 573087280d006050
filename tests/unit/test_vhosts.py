"""The demo's own vhost: made, named in the URL, and earlier idle ones tidied away."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from dimsebus.services.vhosts import IDLE_AGE, PREFIX, STAMP, own_vhost, prune, vhost_of

NOW = dt.datetime(2026, 11, 30, 6, 0, tzinfo=dt.UTC)
URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass
class Broker:
    """An in-memory broker's vhosts, their users and live connections."""

    vhosts: dict[str, set[str]] = field(default_factory=lambda: {"/": {"guest"}})
    connected: set[str] = field(default_factory=set)
    refuses: bool = False
    name: str = "a fake"

    async def add(self, vhost: str, user: str) -> None:
        if self.refuses:
            raise RuntimeError("HTTP 401 Unauthorized")
        self.vhosts[vhost] = {user}

    async def names(self) -> list[str]:
        return list(self.vhosts)

    async def in_use(self, vhost: str) -> bool:
        return vhost in self.connected

    async def delete(self, vhost: str) -> None:
        del self.vhosts[vhost]


def demo_vhost(age: dt.timedelta) -> str:
    return f"{PREFIX}{NOW - age:{STAMP}}-abcdef"


async def test_the_demo_gets_a_new_vhost_for_the_urls_user() -> None:
    broker, said = Broker(), list[str]()
    url = await own_vhost(URL, NOW, said.append, [broker])
    vhost = vhost_of(url)
    assert vhost.startswith(f"{PREFIX}20261130-060000-")
    assert broker.vhosts[vhost] == {"guest"}
    assert url == f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    assert said == [f"this demo runs in a vhost of its own, {vhost} (made with a fake)"]


async def test_two_runs_get_two_vhosts() -> None:
    broker = Broker()
    first = await own_vhost(URL, NOW, print, [broker])
    second = await own_vhost(URL, NOW, print, [broker])
    assert first != second


async def test_the_next_tool_is_tried_and_none_means_one_line_and_the_urls_vhost() -> None:
    refusing, said = Broker(refuses=True, name="the management API"), list[str]()
    assert await own_vhost(URL + "site", NOW, said.append, [refusing]) == URL + "site"
    assert said == [
        "no vhost of its own could be made (the management API: HTTP 401 Unauthorized): "
        "running in vhost 'site', where another demo's events may show"
    ]
    working: list[str] = []
    url = await own_vhost(URL, NOW, working.append, [refusing, Broker()])
    assert vhost_of(url).startswith(PREFIX)


async def test_only_earlier_demos_idle_vhosts_old_enough_are_deleted() -> None:
    # given earlier demos' vhosts: one idle and old, one old but in use, one too young
    old = demo_vhost(IDLE_AGE + dt.timedelta(minutes=1))
    busy, young = old.replace("abcdef", "busy00"), demo_vhost(IDLE_AGE / 2)
    broker = Broker(connected={busy})
    for vhost in (old, busy, young, "dimsebus-test-1234", f"{PREFIX}not-a-time"):
        await broker.add(vhost, "guest")
    # when a demo tidies up, then only the idle old one is gone
    assert await prune(broker, NOW, keep="") == [old]
    assert set(broker.vhosts) == {"/", busy, young, "dimsebus-test-1234", f"{PREFIX}not-a-time"}
