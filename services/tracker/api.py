"""The tracker's HTTP API: ``/moves``, ``/moves/{id}``, and its OpenAPI document.

Each request reads the store through a connection of its own (the tracker
writes through another), in a worker thread. The same port serves the web page
(``web.pages``): ``/``, and ``/moves/{id}`` as HTML to a browser that asks for it
(``Accept: text/html``, without ``?format=json``). The API only reads; the page's
actions (``web.actions``, off unless ``ui_actions``) are POSTs of their own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from aiohttp import web

from dimsebus.services.clock import utc_now
from dimsebus.services.tracker.ports import EventSpool
from dimsebus.services.tracker.progress import MoveState, outcome
from dimsebus.services.tracker.settings import TrackerSettings
from dimsebus.services.tracker.store import open_store
from dimsebus.services.tracker.views import move_view
from dimsebus.services.tracker.web import pages as web_pages
from dimsebus.services.tracker.web.live import Live

UNFINISHED = ("in_progress", "retrying", "stalled")

_COUNTS = {
    "type": "object",
    "properties": {
        name: {"type": ["integer", "null"] if name == "remaining" else "integer"}
        for name in ("remaining", "completed", "warning", "failed")
    },
}
_MOVE = {
    "type": "object",
    "required": ["move_id", "node_id", "outcome", "counts", "failed_instances", "timeline"],
    "properties": {
        "move_id": {"type": "string", "format": "uuid"},
        "node_id": {"type": "string"},
        "requestor_ae_title": {"type": ["string", "null"]},
        "source_ae_title": {
            "type": ["string", "null"],
            "description": "where the instances come from: the AE title the C-MOVE-RQ called "
            "(the node), or the archive a Move SCU move asked",
        },
        "destination_ae_title": {"type": ["string", "null"]},
        "c_move": {"type": "object"},
        "query_level": {"type": ["string", "null"]},
        "keys": {"type": "object", "additionalProperties": {"type": "string"}},
        "outcome": {
            "enum": [
                "in_progress",
                "retrying",
                "completed",
                "completed_with_failures",
                "failed",
                "cancelled",
                "stalled",
            ]
        },
        "expected": {"type": ["integer", "null"]},
        "counts": _COUNTS,
        "final_status": {"type": ["string", "null"]},
        "failed_instances": {"type": "array", "items": {"type": "object"}},
        "retried_instances": {"type": "array", "items": {"type": "object"}},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "last_event_at": {"type": ["string", "null"], "format": "date-time"},
        "completed_at": {"type": ["string", "null"], "format": "date-time"},
        "events": {"type": "integer"},
        "responses": {
            "type": "object",
            "description": "distinct response events folded: received, invalid (a response "
            "without a usable Status) and missing (none came)",
            "properties": {
                "received": {"type": "integer"},
                "invalid": {"type": "integer"},
                "missing": {"type": "integer"},
            },
        },
        "timeline": {"type": "array", "items": {"type": "object"}},
    },
}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "dimsebus tracker",
        "version": "1",
        "description": "C-MOVEs as the tracker folded them from the dimsebus.log stream.",
    },
    "paths": {
        "/moves": {
            "get": {
                "summary": "Moves, oldest first",
                "parameters": [
                    {"name": "outcome", "in": "query", "schema": {"type": "string"}},
                    {"name": "ae", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "the moves",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Move"},
                                }
                            }
                        },
                    }
                },
            }
        },
        "/moves/{move_id}": {
            "get": {
                "summary": "One move, by id or a unique prefix of it",
                "parameters": [
                    {
                        "name": "move_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the move",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Move"}}
                        },
                    },
                    "404": {"description": "no move, or more than one, has that id or prefix"},
                },
            }
        },
    },
    "components": {"schemas": {"Move": _MOVE}},
}


def load_moves(settings: TrackerSettings, prefix: str = "") -> list[MoveState]:
    """Every move in the tracker's store (or those whose id starts with ``prefix``)."""
    store = open_store(settings.db)
    try:
        return store.moves_starting_with(prefix) if prefix else store.all_moves()
    finally:
        store.close()


def load_views(settings: TrackerSettings, prefix: str = "") -> list[dict[str, Any]]:
    """Every move (or those whose id starts with ``prefix``) as `moves show --json` prints it."""
    now, stall = utc_now(), dt.timedelta(seconds=settings.stall_after)
    return [move_view(move, now, stall) for move in load_moves(settings, prefix)]


def moves_in_progress(settings: TrackerSettings) -> float:
    """How many moves are not finished (in progress, retrying or stalled)."""
    now, stall = utc_now(), dt.timedelta(seconds=settings.stall_after)
    return float(sum(outcome(m, now, stall) in UNFINISHED for m in load_moves(settings)))


def routes(
    settings: TrackerSettings, live: Live | None = None, outbox: EventSpool | None = None
) -> list[web.RouteDef]:
    """The API's routes over the tracker's store, and the web page's (live through ``live``;
    its actions, when ``ui_actions`` allows them, recorded through ``outbox``)."""
    pages = web_pages.Pages(settings, live, outbox)

    async def list_moves(request: web.Request) -> web.Response:
        views = await asyncio.to_thread(load_views, settings)
        if wanted := request.query.get("outcome"):
            views = [v for v in views if v["outcome"] == wanted]
        if ae := request.query.get("ae"):
            views = [v for v in views if ae in (v["requestor_ae_title"], v["destination_ae_title"])]
        return web.json_response(views)

    async def one_move(request: web.Request) -> web.Response:
        prefix = request.match_info["move_id"].lower()
        found = await asyncio.to_thread(load_views, settings, prefix)
        if web_pages.wants_html(request):
            if len(found) != 1:
                return pages.missing(f"The move id {prefix!r} matches {len(found)} moves.")
            return pages.move(found[0], request)
        if len(found) != 1:
            return web.json_response(
                {"error": f"move id {prefix!r} matches {len(found)} moves"}, status=404
            )
        return web.json_response(found[0])

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    return [
        web.get("/moves", list_moves),
        web.get("/moves/{move_id}", one_move),
        web.get("/openapi.json", openapi),
        *web_pages.routes(pages),
    ]
