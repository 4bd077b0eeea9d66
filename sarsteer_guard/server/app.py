"""The ASGI app: routes for the ``sarsteer.v1`` turn socket, health, readiness and metrics.

The app wires the server's parts together and holds no logic of its own:
:mod:`.auth` decides who may connect, :class:`~.service.GuardService` owns the guard's
lifecycle and drain, :class:`~.connection.TurnConnection` speaks the turn protocol on one
socket. Another WebSocket endpoint joins by adding a route whose handler calls
:func:`accept_websocket` (the same origin, token and drain checks) and runs its own
connection class on the same service.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from sarsteer_guard._version import __version__
from sarsteer_guard.guard.events import SpeechGuard
from sarsteer_guard.log import get_logger
from sarsteer_guard.server.auth import metrics_refusal, websocket_refusal
from sarsteer_guard.server.connection import TurnConnection
from sarsteer_guard.server.protocol import TURNS_PATH
from sarsteer_guard.server.realtime import REALTIME_PATH, RealtimeConnection
from sarsteer_guard.server.service import GuardService
from sarsteer_guard.server.settings import ServerSettings

log = get_logger(__name__)

__all__ = ["GuardService", "accept_websocket", "create_app"]


def create_app(
    guard: SpeechGuard,
    settings: ServerSettings,
    *,
    on_fatal: Callable[[str], None] | None = None,
) -> Starlette:
    """Build the ASGI app serving ``guard`` under ``settings`` (validated here).

    ``on_fatal`` is called with the reason if the guard fails to start (the CLI uses it
    to exit non-zero so an orchestrator restarts the container). The service is at
    ``app.state.service`` for the runner's drain.
    """
    settings.check()
    if not settings.tokens.worker:
        log.warning(
            "server.unauthenticated",
            host=settings.host,
            hint="no worker token configured: anyone on this machine may run turns",
        )
    service = GuardService(guard, settings, on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.begin_start()
        try:
            yield
        finally:
            await service.close()

    app = Starlette(routes=routes(service), lifespan=lifespan)
    app.state.service = service
    return app


def routes(service: GuardService) -> list[BaseRoute]:
    """Every endpoint of the server, bound to ``service``."""

    async def turns(websocket: WebSocket) -> None:
        if await accept_websocket(websocket, service):
            await TurnConnection(websocket, service).run()

    async def realtime(websocket: WebSocket) -> None:
        if await accept_websocket(websocket, service):
            model = websocket.query_params.get("model")
            await RealtimeConnection(websocket, service, model).run()

    async def readyz(request: Request) -> Response:
        ready, reason = service.readiness()
        body = {
            "ready": ready,
            "reason": reason,
            "open_turns": service.open_turns(),
            "queue_depth": service.queue_depth(),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        refusal = metrics_refusal(service.settings, request.headers)
        if refusal is not None:
            return refusal
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return [
        WebSocketRoute(TURNS_PATH, turns),
        WebSocketRoute(REALTIME_PATH, realtime),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
    ]


async def healthz(request: Request) -> Response:
    """Liveness: the process answers (the guard may still be loading)."""
    return JSONResponse({"status": "ok", "version": __version__})


async def accept_websocket(websocket: WebSocket, service: GuardService) -> bool:
    """Accept a guard socket, or refuse it before it opens (origin, token, draining).

    Returns True when accepted. Every WebSocket endpoint of the server goes through
    here, so none can skip a check.
    """
    refusal = websocket_refusal(service.settings, websocket.headers)
    if refusal is None and service.draining:
        refusal = JSONResponse({"error": "shutting down: connect to another replica"}, 503)
    limit = service.settings.max_connections
    if refusal is None and service.connection_count() >= limit:
        log.warning("server.connection_limit", max_connections=limit)
        refusal = JSONResponse(
            {"error": f"{limit} connections are open (--max-connections): retry shortly"}, 503
        )
    if refusal is not None:
        await websocket.send_denial_response(refusal)
        return False
    service.accepting += 1
    try:
        await websocket.accept()
    finally:
        service.accepting -= 1  # the caller adds the connection before its next await
    return True
