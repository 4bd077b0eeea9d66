"""The guard as a shared service: its lifecycle, readiness and the drain on SIGTERM.

One :class:`GuardService` per server, shared by every connection of every endpoint. It
starts the guard in the background (so ``/healthz`` answers while a large model loads),
answers readiness from the guard's own :attr:`SpeechGuard.ready`, counts open turns
across connections, and drains: refuse new turns, let open ones finish up to the grace
period, cancel the rest, then close the guard (which flushes its audit spool).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

from sarsteer_guard.errors import one_line
from sarsteer_guard.guard.events import SpeechGuard
from sarsteer_guard.log import get_logger
from sarsteer_guard.server import metrics
from sarsteer_guard.server.limits import MIB, ByteBudget
from sarsteer_guard.server.settings import ServerSettings

log = get_logger(__name__)

#: After the grace period, how long the drain gives connections to send their final
#: messages and close frames before it cuts them.
DRAIN_CLOSE_S = 1.0


class Connection(Protocol):
    """What the service needs of a connection (any endpoint's) to drain it."""

    @property
    def open_turns(self) -> int:
        """Turns receiving audio or generating on this connection."""
        ...

    async def shutdown(self) -> None:
        """End the connection's open turns and close it (the drain deadline passed)."""

    def abort(self) -> None:
        """Stop serving at once and free the turns (shutdown overran the drain's deadline).

        Required: a connection that could not be cut would pin the drain past its deadline.
        """


class GuardService:
    """The guard's lifecycle, readiness and drain, shared by every connection.

    Invariants: the guard is started at most once and closed exactly once, after the
    drain; ``draining`` never goes back to False; :meth:`turn_closed` is called once per
    turn that was counted open.
    """

    def __init__(
        self,
        guard: SpeechGuard,
        settings: ServerSettings,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.guard = guard
        self.settings = settings
        self.on_fatal = on_fatal
        #: The URL clients connect to, logged once the guard is ready (set by the runner).
        self.url: str | None = None
        self.connections: set[Connection] = set()
        self.started = False
        self.start_error: str | None = None
        self.draining = False
        self._start_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._turn_closed = asyncio.Event()
        self._closed = False
        #: Audio held by every connection's open turns (see :mod:`.limits`).
        self.audio_budget = ByteBudget(int(settings.max_audio_mb * MIB))
        #: Handshakes accepted but not yet in ``connections`` (for ``max_connections``).
        self.accepting = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def begin_start(self) -> None:
        """Start the guard in the background (loading a model can take minutes)."""
        if self._start_task is None:
            self._start_task = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        started = time.perf_counter()
        try:
            await self.guard.start()
        except Exception as error:
            self.start_error = f"{type(error).__name__}: {one_line(error)}"
            log.error("server.guard_start_failed", error=self.start_error)
            if self.on_fatal is not None:
                self.on_fatal(self.start_error)
            return
        self.started = True
        log.info(
            "server.guard_ready",
            seconds=round(time.perf_counter() - started, 2),
            url=self.url,
        )

    async def close(self) -> None:
        """Drain (if not yet), then close the guard, which flushes its audit spool."""
        if self._closed:
            return
        self._closed = True
        await self.drain()
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._start_task
        await self.guard.close()
        log.info("server.guard_closed")

    # -- state -------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for ``/readyz`` and for accepting turns."""
        if self.draining:
            return False, "shutting down: not accepting new turns"
        if self.start_error is not None:
            return False, f"the guard failed to start: {self.start_error}"
        if not self.started:
            return False, "loading: the guard is starting (model, policy, vectors)"
        if not self.guard.ready:
            return False, "the guard reports not ready (model or engine stopped)"
        return True, "ready"

    def queue_depth(self) -> int | None:
        """Turns waiting for the guard's model, when the guard can see its queue."""
        return self.guard.queue_depth

    def open_turns(self) -> int:
        """Turns receiving audio or generating, across connections."""
        return sum(c.open_turns for c in self.connections)

    def connection_count(self) -> int:
        """Sockets served or being accepted (checked against ``max_connections``)."""
        return len(self.connections) + self.accepting

    def forget_session(self, session_id: str) -> None:
        """Drop a session's conversation history (a connection's private session ended)."""
        try:
            self.guard.forget_session(session_id)
        except Exception:
            log.exception("server.forget_session_failed", session_id=session_id)

    def turn_closed(self) -> None:
        """A turn ended (final message sent or connection gone): wakes the drain."""
        metrics.OPEN_TURNS.dec()
        self._turn_closed.set()

    # -- drain -------------------------------------------------------------------------------
    async def drain(self) -> None:
        """Refuse new turns, wait for open ones up to the grace period, then cancel the rest.

        Idempotent: concurrent callers wait for the same drain.
        """
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.shield(self._drain_task)

    async def _drain(self) -> None:
        self.draining = True
        grace = self.settings.shutdown_grace_s
        log.info("server.draining", open_turns=self.open_turns(), grace_s=grace)
        await self._wait_for_open_turns(grace)
        left = self.open_turns()
        if left:
            log.warning("server.drain_deadline", cancelled_turns=left)
        connections = list(self.connections)
        try:
            # Final messages and close frames get a short, fixed time: the drain ends at
            # its grace deadline whatever the clients do (one that does not read is cut).
            async with asyncio.timeout(DRAIN_CLOSE_S):
                await asyncio.gather(*(c.shutdown() for c in connections))
        except TimeoutError:
            log.warning("server.drain_close_overran", seconds=DRAIN_CLOSE_S)
            for connection in connections:
                connection.abort()
        log.info("server.drained")

    async def _wait_for_open_turns(self, grace_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while True:
            self._turn_closed.clear()
            remaining = deadline - loop.time()
            if not self.open_turns() or remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._turn_closed.wait(), remaining)
