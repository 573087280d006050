"""The web page's sign-in sessions, CSRF tokens, origin check and the settings that allow
actions: pure, no server; and the move's page, rendered without one."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from pydantic import SecretStr

from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.errors import ConfigError
from dimsebus.services.settings import load_settings, masked
from dimsebus.services.tracker.progress import MoveState, apply, move_key
from dimsebus.services.tracker.settings import TrackerSettings
from dimsebus.services.tracker.views import move_view
from dimsebus.services.tracker.web.pages import Pages
from dimsebus.services.tracker.web.sessions import (
    COOKIE,
    Attempts,
    cookie_value,
    csrf_matches,
    csrf_token,
    new_session,
    read_cookie,
    same_origin,
    signing_key,
    token_matches,
)

KEY = signing_key("a-token-for-the-tests-0123456789")
ID = "0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0
FINISHED_AT = dt.datetime(2026, 11, 30, 9, tzinfo=dt.UTC)


def _story_move() -> MoveState:
    state: MoveState | None = None
    start = FINISHED_AT - dt.timedelta(hours=1)
    for event in move_story(node_id="n1", start=start, ids=sequential_ids(), instances=4):
        if move_key(event) is not None:
            state = apply(state, event)
    assert state is not None
    return state


FINISHED = _story_move()  # 4 instances, 2 failed


def test_a_signed_cookie_reads_back_until_it_ends() -> None:
    # given a session of an hour, as its cookie
    session = new_session(ID, NOW, 3600)
    cookie = cookie_value(KEY, session)
    # then it reads back during the hour, and not at its end
    assert read_cookie(KEY, cookie, NOW + 3599) == session
    assert read_cookie(KEY, cookie, NOW + 3600) is None


def test_a_changed_or_foreign_cookie_is_no_session() -> None:
    # given a good cookie
    cookie = cookie_value(KEY, new_session(ID, NOW, 3600))
    session_id, expires, signature = cookie.split(".")
    # then a later end, another id, a cookie signed by another token, or junk is refused
    assert read_cookie(KEY, f"{session_id}.{int(expires) + 86400}.{signature}", NOW) is None
    assert read_cookie(KEY, f"{'f' * 32}.{expires}.{signature}", NOW) is None
    assert read_cookie(signing_key("another-token-0123456789"), cookie, NOW) is None
    for junk in (None, "", "x", cookie + "0", cookie.upper()):
        assert read_cookie(KEY, junk, NOW) is None


def test_a_csrf_token_is_its_sessions_alone() -> None:
    # given two sessions
    one, two = new_session(ID, NOW, 60), new_session("f" * 32, NOW, 60)
    # then each session's token matches it, not the other, and an empty one matches neither
    assert csrf_matches(KEY, one, csrf_token(KEY, one))
    assert not csrf_matches(KEY, one, csrf_token(KEY, two))
    assert not csrf_matches(KEY, one, "")
    assert not csrf_matches(signing_key("another-token-0123456789"), one, csrf_token(KEY, one))


def test_the_public_id_shows_nothing_of_the_session() -> None:
    session = new_session(ID, NOW, 60)
    assert len(session.public_id) == 16
    assert session.public_id not in session.id
    assert session.public_id not in cookie_value(KEY, session)
    with pytest.raises(ValueError, match="32 lowercase hex"):
        new_session("not random", NOW, 60)


def test_the_token_is_compared_whole() -> None:
    assert token_matches("a-token-for-the-tests", "a-token-for-the-tests")
    assert not token_matches("a-token-for-the-tests", "a-token-for-the-test")
    assert not token_matches("a-token-for-the-tests", "")


@pytest.mark.parametrize(
    ("origin", "referer", "same"),
    [
        ("http://127.0.0.1:8080", None, True),
        ("https://tracker.example:8080", None, True),
        ("http://evil.example", None, False),
        ("http://127.0.0.1:8081", None, False),
        (None, "http://127.0.0.1:8080/moves/1", True),
        ("null", "http://127.0.0.1:8080/", True),
        ("null", None, False),
        (None, "http://evil.example/127.0.0.1:8080", False),
        (None, None, False),
        ("javascript://127.0.0.1:8080", None, False),
    ],
)
def test_a_post_is_from_here_only_by_its_origin_or_referer(
    origin: str | None, referer: str | None, same: bool
) -> None:
    host = "tracker.example:8080" if origin and "tracker" in origin else "127.0.0.1:8080"
    assert same_origin(origin, referer, host) is same


def test_wrong_tokens_are_limited_per_window() -> None:
    # given five wrong tokens within a minute
    attempts = Attempts(limit=5, window=60)
    for second in range(5):
        assert attempts.allowed(NOW + second)
        attempts.failed(NOW + second)
    # then a sixth try waits until the first is a minute old
    assert not attempts.allowed(NOW + 59)
    assert attempts.allowed(NOW + 60)


def test_actions_need_a_long_enough_token_and_are_off_by_default() -> None:
    assert load_settings(TrackerSettings).ui_actions is False
    with pytest.raises(ConfigError, match=r"^ui_actions: .*needs ui_token"):
        load_settings(TrackerSettings, ui_actions=True)
    with pytest.raises(ConfigError, match="at least 16 characters") as refused:
        load_settings(TrackerSettings, ui_actions=True, ui_token="short-secret")
    assert "short-secret" not in str(refused.value)
    assert "\n" not in str(refused.value)
    settings = load_settings(TrackerSettings, ui_actions=True, ui_token="s" * 20)
    assert masked(settings)["ui_token"] == "**********"


# -- what the move's page offers ---------------------------------------------------------


class _Spool:
    """An outbox that holds what it is given (the page records nothing while rendering)."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def append(self, events: Iterable[CloudEvent]) -> None:
        self.events.extend(events)


def _move_page(settings: TrackerSettings, cookie: str | None) -> str:
    spool = _Spool()
    pages = Pages(settings, None, spool)
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
    request = make_mocked_request("GET", "/moves/x", headers=headers)
    view = move_view(FINISHED, FINISHED_AT, dt.timedelta(minutes=5))
    body = pages.move(view, request).text
    assert isinstance(body, str)
    assert spool.events == []
    return body


def test_the_move_page_offers_actions_only_when_allowed_and_signed_in(tmp_path: Path) -> None:
    token = "a-token-for-the-tests-0123456789"
    off = TrackerSettings(db=str(tmp_path / "t.sqlite"))
    on = TrackerSettings(db=str(tmp_path / "t.sqlite"), ui_actions=True, ui_token=SecretStr(token))
    key = signing_key(token)
    session = new_session(ID, time.time(), 60)
    signed_in = cookie_value(key, session)
    # when the page is read with actions off (even with a good cookie), on without a
    # session, with a forged one, and signed in
    pages = {
        "off": _move_page(off, signed_in),
        "signed out": _move_page(on, None),
        "forged": _move_page(on, cookie_value(signing_key("x" * 20), session)),
        "signed in": _move_page(on, signed_in),
    }
    # then only the signed-in page has forms, each with the session's CSRF token
    for name, body in pages.items():
        assert ('<form method="post" action="/moves/' in body) is (name == "signed in"), name
    assert "Actions" not in pages["off"]
    assert 'href="/signin?next=/moves/' in pages["signed out"]
    assert pages["signed in"].count(f'name="csrf" value="{csrf_token(key, session)}"') == 3
    assert token not in pages["signed in"]
