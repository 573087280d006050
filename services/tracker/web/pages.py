"""The web page's routes: ``/`` (the moves), ``/moves/{id}`` as HTML, ``/live`` (SSE), static files.

Server-rendered with Jinja2, every value autoescaped (AE titles, reasons and comments come
from peers); the page's script and style are files of this package, served with a
Content-Security-Policy that allows nothing else, so no inline script can run even if
markup got through. Without JavaScript the list is the list as it stood when served.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from dimsebus.services.clock import utc_now
from dimsebus.services.tracker.ports import EventSpool
from dimsebus.services.tracker.settings import TrackerSettings
from dimsebus.services.tracker.store import SqlStore, open_store
from dimsebus.services.tracker.views import status_meaning
from dimsebus.services.tracker.web import actions as web_actions
from dimsebus.services.tracker.web.actions import ACTIONS, Actions
from dimsebus.services.tracker.web.listing import (
    OUTCOMES,
    BadFilter,
    Filters,
    Page,
    parse_filters,
    read_page,
)
from dimsebus.services.tracker.web.live import Live, Subscriber

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on a
    # form's POST, and the actions check that their POST came from this server's page
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATIC = {"web.css": "text/css", "web.js": "text/javascript"}
HEARTBEAT = 15.0
BLANK: dict[str, Any] = {
    "move_id": "",
    "requestor_ae_title": None,
    "source_ae_title": None,
    "destination_ae_title": None,
    "outcome": "in_progress",
    "expected": None,
    "counts": {"completed": 0, "warning": 0, "failed": 0, "remaining": None},
    "started_at": None,
    "completed_at": None,
    "stalls_at": None,
}
"""The row the page's script copies for a move that appears while it is open."""
LABELS = {
    "in_progress": "in progress",
    "retrying": "retrying",
    "stalled": "stalled",
    "completed": "completed",
    "completed_with_failures": "completed with failures",
    "failed": "failed",
    "cancelled": "cancelled",
}


def templates() -> jinja2.Environment:
    """The package's templates, autoescaped whatever their names, strict about names."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dimsebus.services.tracker.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(labels=LABELS, outcomes=OUTCOMES, meaning=status_meaning, bar=bar)
    env.filters.update(when=when, took=took)
    return env


def bar(row: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a move's progress bar: done of total, and its three parts."""
    counts = row["counts"]
    ok, warning, failed = counts["completed"], counts["warning"], counts["failed"]
    done = ok + warning + failed
    total = row["expected"] if row["expected"] is not None else None
    remaining = "?" if total is None else max(total - done, 0)
    text = f"{ok} completed, {warning} warning, {failed} failed, {remaining} remaining"
    return {
        "ok": ok,
        "warning": warning,
        "failed": failed,
        "done": done,
        "total": total,
        "scale": max(total or done, 1),
        "text": text,
    }


def when(value: str | dt.datetime | None) -> str:
    """A time (or its ISO text) as the page shows it: UTC, to the second."""
    if not value:
        return "—"
    at = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def took(row: dict[str, Any], now: dt.datetime) -> str:
    """How long the move took, or has been running."""
    if not row["started_at"]:
        return "—"
    start = dt.datetime.fromisoformat(row["started_at"])
    end = dt.datetime.fromisoformat(row["completed_at"]) if row["completed_at"] else now
    seconds = max((end - start).total_seconds(), 0.0)
    text = f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return text if row["completed_at"] else f"{text} so far"


def wants_html(request: web.Request) -> bool:
    """A browser asking for a page (``?format=json`` asks for the API's JSON)."""
    if request.query.get("format") == "json":
        return False
    return "text/html" in request.headers.get("Accept", "")


class Pages:
    """The page handlers over one tracker's store and its live feed."""

    def __init__(
        self, settings: TrackerSettings, live: Live | None, outbox: EventSpool | None = None
    ) -> None:
        self.settings = settings
        self.live = live
        self.env = templates()
        self.stall = dt.timedelta(seconds=settings.stall_after)
        self.actions = Actions(settings, outbox, self.html)

    def html(self, template: str, status: int = 200, **context: Any) -> web.Response:
        signed_out = {"actions": False, "signed_in": False, "csrf": ""}
        body = self.env.get_template(template).render(**{"now": utc_now(), **signed_out, **context})
        return web.Response(
            text=body, status=status, content_type="text/html", charset="utf-8", headers=HEADERS
        )

    async def moves(self, request: web.Request) -> web.Response:
        try:
            filters = parse_filters(request.query)
        except BadFilter as exc:
            return self.html("error.html", status=400, title="Bad filter", message=str(exc))
        now = utc_now()
        page = await asyncio.to_thread(self._page, filters, now)
        return self.html(
            "moves.html",
            page=page,
            filters=filters,
            now=now,
            live=self.live,
            blank=BLANK,
            **self.actions.context(request),
        )

    def _page(self, filters: Filters, now: dt.datetime) -> Page:
        store = open_store(self.settings.db)
        try:
            assert isinstance(store, SqlStore)
            return read_page(store.db, filters, now, self.stall)
        finally:
            store.close()

    def move(self, view: dict[str, Any], request: web.Request | None = None) -> web.Response:
        """One move's page, from its view (``views.move_view``, as the API serves it)."""
        asked = request.query.get("asked", "") if request is not None else ""
        return self.html(
            "move.html",
            move=view,
            live=self.live,
            asked=asked if asked in ACTIONS else "",
            **self.actions.context(request),
        )

    def missing(self, message: str) -> web.Response:
        return self.html("error.html", status=404, title="No such move", message=message)

    async def feed(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: each committed change of a move the page may show."""
        try:
            filters = parse_filters(request.query)
        except BadFilter as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        only = request.query.get("move", "")
        if self.live is None:  # no tracker commits here (demo --serve): 204 stops EventSource
            return web.Response(status=204, headers=HEADERS)
        response = web.StreamResponse(
            headers={**HEADERS, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        subscriber = self.live.subscribe()
        try:
            await self._stream(response, subscriber, filters, only)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the page went
        finally:
            self.live.unsubscribe(subscriber)
        return response

    async def _stream(
        self, response: web.StreamResponse, subscriber: Subscriber, filters: Filters, only: str
    ) -> None:
        while (found := await subscriber.next(HEARTBEAT)) is not None:
            rows, resync = found
            # resync: the page reloads the list (what came since is in what it reloads)
            out = bytearray(b"event: resync\ndata: {}\n\n" if resync else b"")
            if not rows and not resync:
                out += b": alive\n\n"
            for row in rows:
                if only and row["move_id"] != only:
                    continue
                payload = {**row, "listed": filters.matches(row), "took": took(row, utc_now())}
                payload["bar"] = bar(row)
                out += b"event: move\ndata: " + json.dumps(payload).encode() + b"\n\n"
            if out:
                await response.write(bytes(out))

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        body = resources.files("dimsebus.services.tracker.web").joinpath("static", name)
        return web.Response(
            body=body.read_bytes(),
            content_type=STATIC[name],
            headers={**HEADERS, "Cache-Control": "max-age=300"},
        )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def routes(pages: Pages) -> list[web.RouteDef]:
    """``/``, ``/live`` and ``/static/{name}``; ``/moves/{id}`` is the API's, which asks
    ``pages.move`` when a browser wants HTML."""
    return [
        web.get("/", pages.moves),
        web.get("/live", pages.feed),
        web.get("/static/{name}", pages.static),
        *web_actions.routes(pages.actions),
    ]
