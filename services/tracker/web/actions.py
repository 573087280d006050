"""The web page's actions, off unless ``ui_actions``: sign in, retry a move, requeue it.

Every action is a POST from a page of this server (Origin, else Referer), by a
signed-in person (the session cookie), carrying the session's CSRF token; one POST
acts on one move. Each is recorded first as a ``dimsebus.action.requested`` in the
tracker's outbox, which its relay publishes like every event the tracker derives.

- retry: the resend commands of ``dimsebus moves retry`` (``progress.retry_commands``,
  ``resends.send_commands``: announced as ``dimsebus.retry.scheduled``, then sent).
- requeue: the parked items are the retrier's; the tracker does not read its store.
  The recorded event is the request: the retrier's queue is bound to it, and the
  retrier runs its own ``requeue``, as ``dimsebus retries requeue`` does.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiormq.exceptions import AMQPError

from dimsebus.schemas import events as ev
from dimsebus.services.clock import new_id, utc_now
from dimsebus.services.errors import DimsebusError
from dimsebus.services.resends import send_commands
from dimsebus.services.settings import ServiceSettings
from dimsebus.services.tracker.ports import EventSpool
from dimsebus.services.tracker.progress import MoveState, retry_commands
from dimsebus.services.tracker.settings import TrackerSettings
from dimsebus.services.tracker.store import open_store
from dimsebus.services.tracker.web.sessions import (
    COOKIE,
    Attempts,
    Session,
    cookie_value,
    csrf_matches,
    csrf_token,
    new_session,
    read_cookie,
    same_origin,
    signing_key,
    token_matches,
)

log = logging.getLogger(__name__)
ACTIONS = ("retry", "requeue")
MOVE_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_FORM_BYTES = 4096
Send = Callable[[ServiceSettings, list[ev.ResendSubOperations]], Awaitable[None]]
Render = Callable[..., web.Response]
"""``Pages.html``: a template's name, then its status and context by keyword."""


class Actions:
    """Sign-in and the actions, over one tracker's store and outbox."""

    def __init__(
        self,
        settings: TrackerSettings,
        outbox: EventSpool | None,
        render: Render,
        send: Send = send_commands,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.render = render
        self.send = send
        token = settings.ui_token.get_secret_value() if settings.ui_token else ""
        # without an outbox (dimsebus demo --serve) nothing could be recorded: no actions
        self.enabled = settings.ui_actions and bool(token) and outbox is not None
        if settings.ui_actions and outbox is None:
            log.warning("ui_actions is on, but this page has no outbox to record in: no actions")
        self.token = token
        self.key = signing_key(token) if self.enabled else b""
        self.attempts = Attempts()
        self.source = f"dimsebus://tracker/{settings.tracker_id}"

    def session(self, request: web.Request) -> Session | None:
        """The signed-in session of a request, if actions are on and its cookie is good."""
        if not self.enabled:
            return None
        return read_cookie(self.key, request.cookies.get(COOKIE), time.time())

    def context(self, request: web.Request | None) -> dict[str, Any]:
        """What a page's template needs: whether to offer sign-in, and the forms' token."""
        session = self.session(request) if request is not None else None
        return {
            "actions": self.enabled,
            "signed_in": session is not None,
            "csrf": csrf_token(self.key, session) if session else "",
        }

    def refused(self, status: int, message: str) -> web.Response:
        return self.render("error.html", status=status, title="Not done", message=message)

    async def signin_form(self, request: web.Request) -> web.Response:
        if not self.enabled:
            raise web.HTTPNotFound()
        back = _local_path(request.query.get("next", "/"))
        return self.render("signin.html", back=back, problem="")

    async def signin(self, request: web.Request) -> web.StreamResponse:
        """The token, once: a signed session cookie (HttpOnly, SameSite=Strict) in return."""
        if not self.enabled:
            raise web.HTTPNotFound()
        if not _from_here(request):
            return self.refused(403, "The form did not come from this page.")
        form = await _form(request)
        back = _local_path(form.get("next", "/"))
        now = time.time()
        if not self.attempts.allowed(now):
            log.warning("web sign-in refused: too many wrong tokens (from %s)", request.remote)
            return self.render(
                "signin.html", status=429, back=back, problem="Too many tries; wait a minute."
            )
        if not token_matches(self.token, form.get("token", "")):
            self.attempts.failed(now)
            log.warning("web sign-in with a wrong token from %s", request.remote)
            return self.render("signin.html", status=403, back=back, problem="Wrong token.")
        session = new_session(secrets.token_hex(16), now, self.settings.ui_session)
        log.info("web sign-in from %s: session %s", request.remote, session.public_id)
        response = web.HTTPSeeOther(back, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            COOKIE,
            cookie_value(self.key, session),
            max_age=int(self.settings.ui_session),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        raise response

    async def signout(self, request: web.Request) -> web.StreamResponse:
        if not self.enabled:
            raise web.HTTPNotFound()
        if (problem := await self._checked(request)) is not None:
            return problem
        response = web.HTTPSeeOther("/")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def act(self, request: web.Request) -> web.StreamResponse:
        """``POST /moves/{id}/retry`` or ``/requeue``: one move, recorded, then done."""
        if not self.enabled:
            raise web.HTTPNotFound()
        action, move_id = request.match_info["action"], request.match_info["move_id"].lower()
        if action not in ACTIONS or not MOVE_ID.match(move_id):
            raise web.HTTPNotFound()
        if (problem := await self._checked(request)) is not None:
            return problem
        session = self.session(request)
        assert session is not None  # _checked said so
        move = await asyncio.to_thread(_find, self.settings, move_id)
        if move is None:
            return self.refused(404, f"No move has the id {move_id}.")
        commands: list[ev.ResendSubOperations] = []
        if action == "retry":
            commands = retry_commands(move, self.source, utc_now(), iter(new_id, None))
            if not commands:
                return self.refused(409, f"Move {move_id} has no failed instances to retry.")
        instances = sum(len(c.data.sop_instance_uids) for c in commands) if commands else None
        event = self._event(action, move, instances, request, session)
        assert self.outbox is not None  # enabled
        await asyncio.to_thread(self.outbox.append, [event])
        log.info(
            "web action %s on move %s from %s (session %s)",
            action,
            move_id,
            request.remote,
            session.public_id,
        )
        if commands:
            try:
                await self.send(self.settings, commands)
            except (DimsebusError, OSError, AMQPError) as exc:
                # e.g. the broker refused the tracker's user (scripts/rabbitmq-users)
                log.warning("web action %s on move %s not sent: %r", action, move_id, exc)
                return self.refused(502, f"The retry was recorded but not sent: {exc!r}")
        raise web.HTTPSeeOther(f"/moves/{move_id}?asked={action}")

    async def _checked(self, request: web.Request) -> web.Response | None:
        """Why a POST may not act (a page to answer with), or None: same origin, signed
        in, the session's CSRF token."""
        if not _from_here(request):
            return self.refused(403, "The form did not come from this page.")
        session = self.session(request)
        if session is None:
            return self.refused(403, "Sign in first (or again: the session ended).")
        form = await _form(request)
        if not csrf_matches(self.key, session, form.get("csrf", "")):
            return self.refused(403, "The form's token is not this session's; reload the page.")
        return None

    def _event(
        self,
        action: str,
        move: MoveState,
        instances: int | None,
        request: web.Request,
        session: Session,
    ) -> ev.ActionRequested:
        now = utc_now()
        return ev.ActionRequested.model_validate(
            {
                "id": new_id(),
                "source": self.source,
                "time": now,
                "subject": str(move.move_id),
                "data": {
                    "action": action,
                    "operation": ev.Operation(kind="move", id=move.move_id),
                    "node_id": move.node_id,
                    "instances": instances,
                    "remote_address": (request.remote or "unknown")[:253],
                    "session": session.public_id,
                    "at": now,
                },
            }
        )


def _from_here(request: web.Request) -> bool:
    return same_origin(request.headers.get("Origin"), request.headers.get("Referer"), request.host)


async def _form(request: web.Request) -> dict[str, str]:
    """A small urlencoded form; anything bigger or of another kind is refused."""
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_FORM_BYTES, request.content_length)
    if request.content_type != "application/x-www-form-urlencoded":
        return {}
    body = await request.content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_FORM_BYTES, len(body))
    return dict(parse_qsl(body.decode("utf-8", "replace"), max_num_fields=8))


def _local_path(path: str) -> str:
    """A path on this server to go back to (never another site's address)."""
    return path if re.fullmatch(r"/(moves/[0-9a-f-]{1,36})?", path) else "/"


def _find(settings: TrackerSettings, move_id: str) -> MoveState | None:
    store = open_store(settings.db)
    try:
        found = store.moves_starting_with(move_id)
        return found[0] if len(found) == 1 else None
    finally:
        store.close()


def routes(actions: Actions) -> list[web.RouteDef]:
    """Sign-in, sign-out and the actions: every one a POST but the sign-in form."""
    return [
        web.get("/signin", actions.signin_form),
        web.post("/signin", actions.signin),
        web.post("/signout", actions.signout),
        web.post("/moves/{move_id}/{action}", actions.act),
    ]
