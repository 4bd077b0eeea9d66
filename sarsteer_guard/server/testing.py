"""Run the server in a background thread, for tests and examples of integrations.

A real uvicorn server on a free loopback port, so tests exercise the same socket,
handshake and framing code as production; a thread (not the test's event loop) keeps
the server independent of the client under test, as it is in deployment.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import uvicorn

from sarsteer_guard.guard.events import SpeechGuard
from sarsteer_guard.server.app import create_app
from sarsteer_guard.server.runner import uvicorn_config
from sarsteer_guard.server.service import GuardService
from sarsteer_guard.server.settings import ServerSettings


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerThread:
    """A started server: ``url`` (WebSocket), ``http`` (base URL), ``service``, ``stop()``."""

    def __init__(self, guard: SpeechGuard, settings: ServerSettings) -> None:
        self.settings = settings
        self.app = create_app(guard, settings)
        self.service: GuardService = self.app.state.service
        self.server = uvicorn.Server(uvicorn_config(self.app, settings))
        self.thread = threading.Thread(target=self.server.run, name="guard-server", daemon=True)
        base = f"127.0.0.1:{settings.port}"
        self.url = f"ws://{base}/v1/turns"
        self.http = f"http://{base}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait until the socket listens and the guard is started."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not (self.server.started and (self.service.started or self.service.start_error)):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start in time")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop (uvicorn closes sockets, the lifespan closes the guard); idempotent."""
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def serve_in_thread(
    guard: SpeechGuard, settings: ServerSettings | None = None, *, timeout_s: float = 30.0
) -> Iterator[ServerThread]:
    """Serve ``guard`` on a free loopback port for the duration of the block."""
    base = settings or ServerSettings()
    running = ServerThread(guard, replace(base, host="127.0.0.1", port=free_port()))
    running.start(timeout_s)
    try:
        yield running
    finally:
        running.stop()
