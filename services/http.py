"""Each long-running service's HTTP side: ``/metrics`` (Prometheus), ``/healthz``, and more.

Off unless ``http_port`` is set (``DIMSEBUS_HTTP_PORT``, ``--http-port``). The
tracker adds its read-only API; every service answers ``/healthz`` with 200
and what it checked, or 503 and what failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from dimsebus.services.settings import ServiceSettings

Health = Callable[[], dict[str, Any]]
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def application(
    collectors: Iterable[Collector], health: Health, routes: Iterable[web.RouteDef] = ()
) -> web.Application:
    """The service's routes: /metrics from the process registry and its own collectors."""
    own = CollectorRegistry()
    for collector in collectors:
        own.register(collector)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY) + generate_latest(own)
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TEXT})

    async def healthz(request: web.Request) -> web.Response:
        report = health()
        return web.json_response(report, status=200 if report.get("ok") else 503)

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), *routes])
    return app


@contextlib.asynccontextmanager
async def serving(
    settings: ServiceSettings,
    collectors: Iterable[Collector],
    health: Health,
    routes: Iterable[web.RouteDef] = (),
) -> AsyncIterator[int | None]:
    """Serve the service's HTTP side while the block runs; yields the port, or None if off."""
    if settings.http_port is None:
        yield None
        return
    # A handler still running when the service stops (an open page's /live stream never
    # ends by itself) is given a second, then cancelled: aiohttp's default waits 60 s.
    runner = web.AppRunner(
        application(collectors, health, routes), access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = int(sockets[0].getsockname()[1]) if sockets else settings.http_port
    try:
        yield port
    finally:
        await runner.cleanup()
