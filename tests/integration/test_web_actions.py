"""The web page's actions on the real broker: off by default, refused without sign-in, CSRF
token or same origin; a retry and a requeue do what `moves retry` and `retries requeue` do.

The tracker and the retrier run in-process with their HTTP ports; a person is an aiohttp
client with a cookie jar, sending the Origin header a browser sends with a form's POST.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dimsebus.schemas import events as ev
from dimsebus.services.retrier.store import RetryStore
from dimsebus.services.tracker.settings import TrackerSettings
from tests.integration.conftest import (
    RunningNode,
    log_until_now,
    movescu,
    settled,
)
from tests.integration.peers import free_port, refusing_scp, storescp
from tests.integration.test_retrier import RetrierFactory, start_retrier  # noqa: F401

pytestmark = pytest.mark.integration
TOKEN = "a-token-for-the-tests-0123456789"
ACTION = "dimsebus.action.requested"


class Person:
    """A browser: cookies kept, the page's Origin sent with each POST."""

    def __init__(self, client: aiohttp.ClientSession, port: int) -> None:
        self.client = client
        self.base = f"http://127.0.0.1:{port}"

    async def post(
        self, path: str, form: dict[str, str], origin: str | None = None
    ) -> aiohttp.ClientResponse:
        headers = {"Origin": origin or self.base}
        async with self.client.post(
            self.base + path, data=form, headers=headers, allow_redirects=False
        ) as response:
            await response.read()
            return response

    async def page(self, path: str) -> str:
        async with self.client.get(self.base + path, headers={"Accept": "text/html"}) as response:
            assert response.status == 200, await response.text()
            return await response.text()

    async def sign_in(self, token: str = TOKEN) -> aiohttp.ClientResponse:
        return await self.post("/signin", {"token": token, "next": "/"})

    async def csrf(self, move_id: str) -> str:
        found = re.search(
            r'name="csrf" value="([0-9a-f]{64})"', await self.page(f"/moves/{move_id}")
        )
        assert found, "the move's page has no form with a CSRF token"
        return found.group(1)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def actions_on_log(amqp_url: str, tracker: TrackerSettings) -> list[ev.ActionRequested]:
    events = await log_until_now(amqp_url, f"dimsebus://tracker/{tracker.tracker_id}")
    return [e for e in events if isinstance(e, ev.ActionRequested)]


async def test_actions_are_off_by_default(
    amqp_url: str, start_tracker: Any, client: aiohttp.ClientSession
) -> None:
    # given a tracker with its default settings
    port = free_port()
    tracker = await start_tracker(http_port=port, name="off")
    person = Person(client, port)
    move_id = str(uuid.uuid4())
    # when a person tries to sign in and to act
    signin = await person.sign_in()
    retry = await person.post(f"/moves/{move_id}/retry", {"csrf": "0" * 64})
    page = await person.page("/")
    # then nothing is there to do it, the page offers nothing, and nothing is recorded
    assert (signin.status, retry.status) == (404, 404)
    assert "Sign in" not in page
    assert await actions_on_log(amqp_url, tracker) == []


async def test_a_post_without_session_token_or_origin_is_refused(
    amqp_url: str, start_tracker: Any, client: aiohttp.ClientSession
) -> None:
    # given a tracker whose page allows actions
    port = free_port()
    tracker = await start_tracker(http_port=port, ui_actions=True, ui_token=TOKEN, name="refusing")
    person = Person(client, port)
    move_id = str(uuid.uuid4())
    path = f"/moves/{move_id}/retry"
    # when a person acts before signing in, signs in with a wrong token, then rightly
    not_signed_in = await person.post(path, {"csrf": "0" * 64})
    wrong_token = await person.sign_in("not-the-token-0123456789")
    signed_in = await person.sign_in()
    cookie = signed_in.headers.get("Set-Cookie", "")
    # and then acts without the CSRF token, with another session's, from another site,
    # and by GET
    no_csrf = await person.post(path, {})
    bad_csrf = await person.post(path, {"csrf": "0" * 64})
    elsewhere = await person.post(path, {"csrf": "0" * 64}, origin="http://evil.example")
    async with client.get(person.base + path) as by_get:
        get_status = by_get.status
    # then each is refused and nothing is recorded
    assert (not_signed_in.status, wrong_token.status) == (403, 403)
    assert signed_in.status == 303
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Max-Age=3600" in cookie
    assert TOKEN not in cookie
    assert (no_csrf.status, bad_csrf.status, elsewhere.status) == (403, 403, 403)
    assert get_status == 405
    assert await actions_on_log(amqp_url, tracker) == []


@pytest.mark.parametrize("action", ["retry", "requeue"])
async def test_a_person_retries_or_requeues_what_was_given_up(
    action: str,
    tmp_path: Path,
    amqp_url: str,
    start_node: Any,
    start_tracker: Any,
    start_retrier: RetrierFactory,  # noqa: F811
    client: aiohttp.ClientSession,
) -> None:
    # given a move given up on because its destination refused the association (as in
    # test_retrier's test_operator_retries_what_was_given_up), and a signed-in person
    port = free_port()
    tracker = await start_tracker(
        retries=True, http_port=port, ui_actions=True, ui_token=TOKEN, name="web"
    )
    retrier, _ = await start_retrier()
    person = Person(client, port)
    scp_port = free_port()
    with refusing_scp(port=scp_port):
        node: RunningNode = await start_node(instances=5, destinations={"STORESCP": scp_port})
        await movescu(node, "STORESCP")
        given_up = await settled(tracker.db, node, "failed")
    move_id = given_up["move_id"]
    assert (await person.sign_in()).status == 303
    page = await person.page(f"/moves/{move_id}")
    assert f'action="/moves/{move_id}/retry"' in page
    assert f'action="/moves/{move_id}/requeue"' in page
    # when the destination accepts again and the person presses the action's button
    with storescp(tmp_path / "received", port=scp_port) as peer:
        done = await person.post(f"/moves/{move_id}/{action}", {"csrf": await person.csrf(move_id)})
        move = await settled(tracker.db, node, "completed", within=60)
        stored = len(peer.files())
    # then every instance arrives, as a later attempt of the same move, as with the CLI
    assert done.status == 303
    assert done.headers["Location"] == f"/moves/{move_id}?asked={action}"
    assert stored == 5
    assert len(move["retried_instances"]) == 5
    assert min(r["attempts"] for r in move["retried_instances"]) >= 2
    # and the action is on the log: which, which move, from where, a session id, no token
    recorded = [
        a for a in await actions_on_log(amqp_url, tracker) if str(a.data.operation.id) == move_id
    ]
    assert [a.data.action for a in recorded] == [action]
    assert recorded[0].data.remote_address == "127.0.0.1"
    assert re.fullmatch(r"[0-9a-f]{16}", recorded[0].data.session)
    assert TOKEN not in recorded[0].model_dump_json()
    store = RetryStore(retrier.db)
    try:
        states = {item.state for item in store.items(("scheduled", "parked", "requeued"))}
    finally:
        store.close()
    if action == "requeue":  # the retrier ran its requeue: what was parked is requeued
        assert recorded[0].data.instances is None
        assert "parked" not in states
        assert "requeued" in states
    else:  # the tracker sent the resend itself, announced as an operator's retry
        assert recorded[0].data.instances == 5
        scheduled = await log_until_now(amqp_url, "dimsebus://tracker/web")
        assert any(e.type == "dimsebus.retry.scheduled" for e in scheduled)
