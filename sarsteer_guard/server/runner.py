"""Run the app under uvicorn with a graceful SIGTERM: drain turns first, then exit.

uvicorn's own shutdown closes WebSockets at once (code 1012), which would cut every
spoken reply mid-sentence on each deploy. Here the first SIGTERM/SIGINT starts the
service's drain (new turns get ``shutting_down``, open turns finish or are cancelled
at the grace deadline, sockets close with 1001) and only then lets uvicorn stop;
the app's lifespan then closes the guard, which flushes the audit spool. A second
signal exits at once.
"""

from __future__ import annotations

import asyncio
import socket
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from sarsteer_guard.log import get_logger
from sarsteer_guard.server.protocol import TURNS_PATH
from sarsteer_guard.server.service import GuardService
from sarsteer_guard.server.settings import ServerConfigError, ServerSettings

log = get_logger(__name__)


def uvicorn_config(app: Starlette, settings: ServerSettings) -> uvicorn.Config:
    """The uvicorn configuration the server runs with (also used by in-process tests)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        ws="websockets-sansio",
        ws_max_size=settings.hard_max_message_bytes,
        ws_per_message_deflate=False,  # PCM does not compress; deflate only costs CPU
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,
    )


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains the guard service before stopping."""

    def __init__(self, config: uvicorn.Config, service: GuardService) -> None:
        super().__init__(config)
        self.service = service
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None
        self.fatal: str | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve, remembering the loop so signal handlers can schedule the drain."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain then exit; a second one: uvicorn's immediate shutdown."""
        if self._drain is not None or self._loop is None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        log.info("server.signal", signal=sig, action="draining")
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self.service.drain()
        finally:
            self.should_exit = True

    def stop_fatally(self, reason: str) -> None:
        """Stop with a non-zero exit (the guard could not start)."""
        self.fatal = reason
        self.should_exit = True


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or :class:`ServerConfigError` in one line.

    Bound before the model loads, so a busy port fails in milliseconds (exit 2) instead
    of after minutes of loading; uvicorn then serves on this very socket.
    """
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        reason = error.strerror or type(error).__name__
        raise ServerConfigError(
            f"cannot listen on {host}:{port}: {reason}; stop what uses the port or pick "
            "another with --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def client_url(host: str, port: int) -> str:
    """The URL voice workers connect to (a wildcard host names this machine instead)."""
    if host in ("0.0.0.0", "::", "[::]", ""):  # noqa: S104 - naming it, not binding it
        host = socket.gethostname()
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"ws://{host}:{port}{TURNS_PATH}"


def run_server(app: Starlette, settings: ServerSettings, sock: socket.socket | None = None) -> int:
    """Serve ``app`` (on ``sock`` when given, see :func:`bind_socket`) until a signal.

    Returns the process exit code.
    """
    service: GuardService = app.state.service
    server = GracefulServer(uvicorn_config(app, settings), service)
    service.on_fatal = server.stop_fatally
    log.info("server.listening", host=settings.host, port=settings.port)
    server.run(sockets=None if sock is None else [sock])
    return 1 if server.fatal is not None else 0
