"""The lifecycle every WebSocket endpoint shares: send deadlines, abort, close, receive loop.

``/v1/turns`` and ``/v1/realtime`` speak different protocols over the same hazards: a
client that stops reading (a plain send would wait forever, pinning its turns and the
drain), a bug in a handler (the socket must still get a close frame, 1011, not 1006),
and audio memory (charged to the connection's and the server's byte budgets).
:class:`BaseConnection` owns those once; subclasses parse and answer frames.

Invariants: every send waits at most ``send_timeout_s``, then the connection is aborted;
:meth:`BaseConnection.run` always ends with :meth:`BaseConnection._closed_by_peer`
(turns cancelled, audio given back, registration removed), whatever the receive loop did.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from sarsteer_guard.log import get_logger
from sarsteer_guard.server import metrics
from sarsteer_guard.server.limits import MIB, ByteBudget
from sarsteer_guard.server.protocol import CLOSE_INTERNAL_ERROR, dumps
from sarsteer_guard.server.service import GuardService

log = get_logger(__name__)


class BaseConnection(ABC):
    """One served WebSocket: deadlined sends, abort, close and the catch-all receive loop."""

    def __init__(self, websocket: WebSocket, service: GuardService) -> None:
        self.ws = websocket
        self.service = service
        self.settings = service.settings
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._aborted = False
        self._shutdown = False
        self._receiver: asyncio.Task[None] | None = None
        #: This connection's audio allowance (--max-audio-mb-per-connection).
        self.audio_budget = ByteBudget(int(self.settings.max_audio_mb_per_connection * MIB))

    # -- what subclasses provide ---------------------------------------------------------------
    @property
    @abstractmethod
    def open_turns(self) -> int:
        """Turns receiving audio or generating on this connection (the drain waits on them)."""

    @abstractmethod
    async def _greet(self) -> None:
        """Send the first message (``hello``, ``session.created``)."""

    @abstractmethod
    async def _on_frame(self, frame: str | bytes) -> None:
        """Answer one frame; protocol errors are answered here, anything else is a bug."""

    @abstractmethod
    async def _closed_by_peer(self) -> None:
        """The socket is gone: free turns and audio, then call :meth:`_unregister`."""

    @abstractmethod
    async def shutdown(self) -> None:
        """The drain: end open turns, then :meth:`_close` with 1001 (every send deadlined)."""

    # -- sending -------------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message within ``send_timeout_s``; a gone peer marks the connection closed.

        A client that stops reading fills the socket's buffers and a plain send would wait
        forever, pinning the connection and its turns: past the deadline the connection is
        aborted instead (turns cancelled, their memory freed).
        """
        if self._closed:
            return
        text = dumps(message)
        async with self._send_lock:
            if self._closed:
                return
            try:
                async with asyncio.timeout(self.settings.send_timeout_s):
                    await self.ws.send_text(text)
            except TimeoutError:  # before OSError, its base class
                metrics.ERRORS.labels(kind="client_not_reading").inc()
                log.warning(
                    "server.client_not_reading", send_timeout_s=self.settings.send_timeout_s
                )
                self._abort()
            except (WebSocketDisconnect, RuntimeError, OSError):
                self._closed = True

    # -- serving -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the connection until the peer closes it, the server drains, or it is aborted."""
        metrics.CONNECTIONS.inc()
        self.service.connections.add(self)
        try:
            await self._greet()
            if self._closed:
                return
            self._receiver = asyncio.get_running_loop().create_task(self._receive())
            try:
                await self._receiver
            except WebSocketDisconnect:
                pass
            except asyncio.CancelledError:
                if not self._aborted:
                    raise
        finally:
            await self._closed_by_peer()

    def _unregister(self) -> None:
        """The last step of :meth:`_closed_by_peer`: the service forgets the connection."""
        self.service.connections.discard(self)
        metrics.CONNECTIONS.dec()

    async def _receive(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame: str | bytes | None = message.get("bytes")
            if frame is None:
                frame = message.get("text")
            if frame is None:
                continue
            try:
                await self._on_frame(frame)
            except Exception:
                # A bug must not drop the socket without a close frame (clients see 1006).
                log.exception("server.connection_failed")
                await self._close(CLOSE_INTERNAL_ERROR, "internal error: reconnect")
                return

    # -- ending --------------------------------------------------------------------------------
    def _abort(self) -> None:
        """Give up on the socket now: stop reading; :meth:`run` then frees every turn.

        For a client that stopped reading, nothing written reaches it any more (a close
        frame neither), so nothing is sent: returning from the ASGI handler lets the
        server drop the socket.
        """
        self._closed = True
        self._aborted = True
        if self._receiver is not None and not self._receiver.done():
            self._receiver.cancel()

    def abort(self) -> None:
        """The drain's deadline passed: stop serving this socket now (its turns are freed)."""
        self._abort()

    async def _close(self, code: int, reason: str) -> None:
        """Send a close frame (within the send deadline, else abort) and stop reading."""
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(self.settings.send_timeout_s):
                await self.ws.close(code=code, reason=reason)
        except TimeoutError:
            self._abort()
        except Exception:  # noqa: S110 - the peer is gone: nothing left to tell it
            pass
