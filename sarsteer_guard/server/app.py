"""The ASGI app: the ``sarsteer.v1`` turn protocol over WebSocket, health and metrics.

One :class:`GuardService` owns the guard's lifecycle (started in the background so
``/healthz`` answers while a large model loads), readiness, and the drain on SIGTERM.
Each WebSocket is a :class:`TurnConnection` that multiplexes turns by ``turn_id``: audio
is collected per turn, ``turn.end`` runs ``guard.respond`` as a task, and every turn
ends with exactly one final message (``decision``, ``error`` or ``cancelled``).
Anything a client gets wrong is answered with an ``error`` for that turn (or for the
connection) and the connection stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from sarsteer_guard._version import __version__
from sarsteer_guard.guard.events import (
    GuardEvent,
    SpeechGuard,
    TextDelta,
    Turn,
    TurnDecision,
    TurnError,
)
from sarsteer_guard.log import get_logger
from sarsteer_guard.server import metrics
from sarsteer_guard.server.protocol import (
    CLOSE_GOING_AWAY,
    PROTOCOL,
    TURNS_PATH,
    ProtocolError,
    TurnStart,
    dumps,
    error_message,
    event_to_message,
    new_session_id,
    parse_audio_b64,
    parse_audio_frame,
    parse_json,
    parse_turn_id,
    parse_turn_start,
)
from sarsteer_guard.server.settings import Role, ServerSettings

log = get_logger(__name__)

CancelReason = Literal["client", "shutdown", "disconnect"]
#: Turn ids remembered after an early final error, so their late audio is dropped quietly.
_REJECTED_MEMORY = 256


def bearer_token(headers: Any) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return str(token.strip())


class TokenBucket:
    """Allows ``rate`` events per second with bursts of ``rate`` (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one."""
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class GuardService:
    """The guard's lifecycle, readiness and drain, shared by every connection."""

    def __init__(
        self,
        guard: SpeechGuard,
        settings: ServerSettings,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.guard = guard
        self.settings = settings
        self.on_fatal = on_fatal
        self.connections: set[TurnConnection] = set()
        self.started = False
        self.start_error: str | None = None
        self.draining = False
        self._start_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._turn_closed = asyncio.Event()
        self._closed = False

    def begin_start(self) -> None:
        """Start the guard in the background (loading a model can take minutes)."""
        if self._start_task is None:
            self._start_task = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        started = time.perf_counter()
        try:
            await self.guard.start()
        except Exception as error:
            self.start_error = f"{type(error).__name__}: {error}"
            log.error("server.guard_start_failed", error=self.start_error)
            if self.on_fatal is not None:
                self.on_fatal(self.start_error)
            return
        self.started = True
        log.info("server.guard_ready", seconds=round(time.perf_counter() - started, 2))

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for ``/readyz`` and for accepting turns."""
        if self.draining:
            return False, "shutting down: not accepting new turns"
        if self.start_error is not None:
            return False, f"the guard failed to start: {self.start_error}"
        if not self.started:
            return False, "loading: the guard is starting (model, policy, vectors)"
        if not getattr(self.guard, "ready", True):
            return False, "the guard reports not ready (model or engine stopped)"
        return True, "ready"

    def queue_depth(self) -> int | None:
        """Turns waiting in the guard's engine, when it has one."""
        engine = getattr(self.guard, "engine", None)
        depth = getattr(engine, "queue_depth", None)
        return int(depth) if isinstance(depth, int) else None

    def open_turns(self) -> int:
        """Turns receiving audio or generating, across connections."""
        return sum(c.open_turns for c in self.connections)

    def forget_session(self, session_id: str) -> None:
        """Drop a session's conversation history, if the guard keeps any.

        The in-process Guard has ``conversations`` (a ConversationStore); other guards
        (ScriptedGuard, a RemoteGuard behind a relay) may not, and are left alone.
        """
        conversations = getattr(self.guard, "conversations", None)
        forget = getattr(conversations, "forget", None)
        if forget is None:
            return
        try:
            forget(session_id)
        except Exception:
            log.exception("server.forget_session_failed", session_id=session_id)

    def turn_closed(self) -> None:
        """A turn ended (final message sent or connection gone): wakes the drain."""
        metrics.OPEN_TURNS.dec()
        self._turn_closed.set()

    async def drain(self) -> None:
        """Refuse new turns, wait for open ones up to the grace period, then cancel the rest.

        Idempotent: concurrent callers wait for the same drain.
        """
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.shield(self._drain_task)

    async def _drain(self) -> None:
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_s
        log.info(
            "server.draining", open_turns=self.open_turns(), grace_s=self.settings.shutdown_grace_s
        )
        while True:
            self._turn_closed.clear()
            remaining = deadline - loop.time()
            if not self.open_turns() or remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._turn_closed.wait(), remaining)
        left = self.open_turns()
        if left:
            log.warning("server.drain_deadline", cancelled_turns=left)
        await asyncio.gather(*(c.shutdown() for c in list(self.connections)))
        log.info("server.drained")

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


@dataclass
class _Collecting:
    """A turn receiving audio."""

    start: TurnStart
    limit: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


@dataclass
class _Running:
    """A turn whose guard iterator is being drained into the socket."""

    turn_id: str
    task: asyncio.Task[None] | None = None
    cancel_reason: CancelReason | None = None
    final_sent: bool = False  # after this, cancelling is a no-op

    def cancel(self, reason: CancelReason) -> bool:
        """Cancel the task once, unless the turn already has its final message."""
        if self.task is None or self.cancel_reason is not None or self.final_sent:
            return False
        self.cancel_reason = reason
        self.task.cancel()
        return True


class TurnConnection:
    """One WebSocket carrying many turns, multiplexed by ``turn_id``."""

    def __init__(self, websocket: WebSocket, service: GuardService) -> None:
        self.ws = websocket
        self.service = service
        self.settings = service.settings
        self.collecting: dict[str, _Collecting] = {}
        self.running: dict[str, _Running] = {}
        self.rejected: OrderedDict[str, None] = OrderedDict()
        self.bucket = TokenBucket(self.settings.rate_limit_per_s)
        # Turns that name no session get this one: private to the connection, forgotten
        # when it closes (a shared default would mix strangers' conversations).
        self.default_session_id = new_session_id()
        self._default_session_used = False
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._shutdown = False

    @property
    def open_turns(self) -> int:
        """Turns receiving audio or generating on this connection."""
        return len(self.collecting) + len(self.running)

    # -- sending -----------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message; a gone peer just marks the connection closed."""
        if self._closed:
            return
        text = dumps(message)
        async with self._send_lock:
            try:
                await self.ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self._closed = True

    async def send_error(self, turn_id: str | None, kind: str, message: str) -> None:
        """Send an ``error`` message and count it."""
        metrics.ERRORS.labels(kind=kind).inc()
        await self.send(error_message(turn_id, kind, message))

    def _reject(self, turn_id: str) -> None:
        self.rejected[turn_id] = None
        while len(self.rejected) > _REJECTED_MEMORY:
            self.rejected.popitem(last=False)

    async def _fail_turn(self, turn_id: str, kind: str, message: str) -> None:
        """Final error for a turn that is not generating; its late audio is ignored."""
        if self.collecting.pop(turn_id, None) is not None:
            self.service.turn_closed()
        self._reject(turn_id)
        metrics.TURNS.labels(outcome="error").inc()
        await self.send_error(turn_id, kind, message)

    # -- receiving ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the connection until the peer closes it or the server drains."""
        metrics.CONNECTIONS.inc()
        self.service.connections.add(self)
        try:
            await self.send(self._hello())
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    await self._dispatch(message)
                except ProtocolError as error:
                    # An error naming a turn is that turn's final message; one that
                    # cannot end a turn (no id, or the turn already ended) is sent
                    # connection-level, with a null turn_id.
                    turn_id = error.turn_id
                    if turn_id is None or turn_id in self.running or turn_id in self.rejected:
                        await self.send_error(None, error.kind, str(error))
                    else:
                        await self._fail_turn(turn_id, error.kind, str(error))
        except WebSocketDisconnect:
            pass
        finally:
            self._closed = True
            for _ in range(len(self.collecting)):
                self.service.turn_closed()
            self.collecting.clear()
            await self._cancel_all("disconnect")
            if self._default_session_used:
                self.service.forget_session(self.default_session_id)
            self.service.connections.discard(self)
            metrics.CONNECTIONS.dec()

    def _hello(self) -> dict[str, Any]:
        s = self.settings
        return {
            "type": "hello",
            "protocol": PROTOCOL,
            "server_version": __version__,
            "limits": {
                "max_message_bytes": s.max_message_bytes,
                "max_turn_s": s.max_turn_s,
                "turn_timeout_s": s.turn_timeout_s,
                "rate_limit_per_s": s.rate_limit_per_s,
                "max_open_turns": s.max_open_turns,
                "max_new_tokens": s.max_new_tokens_cap,
            },
        }

    async def _dispatch(self, message: Mapping[str, Any]) -> None:
        data: bytes | None = message.get("bytes")
        text: str | None = message.get("text")
        limit = self.settings.max_message_bytes
        if data is not None:
            if len(data) > limit:
                turn_id = _peek_frame_turn_id(data)
                raise ProtocolError(
                    f"binary frame of {len(data)} bytes exceeds max_message_bytes={limit}: "
                    "send audio in smaller chunks",
                    turn_id,
                )
            turn_id, pcm = parse_audio_frame(data)
            await self._append(turn_id, pcm)
            return
        if text is None:
            return
        if len(text) > limit or len(text.encode("utf-8")) > limit:
            raise ProtocolError(
                f"text message exceeds max_message_bytes={limit}: send audio in smaller "
                "chunks (binary frames carry it without base64 overhead)"
            )
        parsed = parse_json(text)
        kind = parsed["type"]
        if kind == "turn.start":
            await self._on_start(parsed)
        elif kind == "turn.audio":
            turn_id, pcm = parse_audio_b64(parsed)
            await self._append(turn_id, pcm)
        elif kind == "turn.end":
            await self._on_end(parse_turn_id(parsed))
        elif kind == "turn.cancel":
            await self._on_cancel(parse_turn_id(parsed))
        else:
            raise ProtocolError(
                f"unknown message type {kind!r}: expected turn.start, turn.audio, turn.end or "
                "turn.cancel"
            )

    async def _on_start(self, message: dict[str, Any]) -> None:
        start = parse_turn_start(message, default_session_id=self.default_session_id)
        turn_id = start.turn_id
        if turn_id in self.collecting or turn_id in self.running:
            # No turn_id on the error: it would end the open turn of the same id.
            raise ProtocolError(
                f"turn_id {turn_id!r} is already open on this connection: use a fresh id per turn"
            )
        self.rejected.pop(turn_id, None)
        ready, reason = self.service.readiness()
        if self.service.draining or self._shutdown:
            await self._fail_turn(
                turn_id, "shutting_down", "the server is shutting down: retry on a new connection"
            )
            return
        if not ready:
            await self._fail_turn(turn_id, "not_ready", f"{reason}; retry shortly (GET /readyz)")
            return
        if self.open_turns >= self.settings.max_open_turns:
            await self._fail_turn(
                turn_id,
                "rate_limited",
                f"{self.open_turns} turns are already open on this connection (max "
                f"{self.settings.max_open_turns}): end or cancel one first",
            )
            return
        if not self.bucket.take():
            await self._fail_turn(
                turn_id,
                "rate_limited",
                f"more than {self.settings.rate_limit_per_s:g} turns per second on this "
                "connection: slow down",
            )
            return
        self.collecting[turn_id] = _Collecting(
            start=start, limit=start.max_audio_bytes(self.settings.max_turn_s)
        )
        metrics.OPEN_TURNS.inc()

    async def _append(self, turn_id: str, pcm: bytes) -> None:
        turn = self.collecting.get(turn_id)
        if turn is None:
            if turn_id in self.rejected or turn_id in self.running:
                return  # late audio of a turn that already has its final message
            raise ProtocolError(f"audio for unknown turn_id {turn_id!r}: send turn.start first")
        turn.size += len(pcm)
        if turn.size > turn.limit:
            await self._fail_turn(
                turn_id,
                "bad_request",
                f"turn {turn_id} has more than {self.settings.max_turn_s:g} s of audio: end "
                "turns sooner (segment speech into shorter turns)",
            )
            return
        turn.chunks.append(pcm)

    async def _on_end(self, turn_id: str) -> None:
        collecting = self.collecting.pop(turn_id, None)
        if collecting is None:
            if turn_id in self.rejected:
                return
            raise ProtocolError(f"turn.end for unknown turn_id {turn_id!r}: send turn.start first")
        start = collecting.start
        if start.session_id == self.default_session_id:
            self._default_session_used = True
        turn = Turn(
            audio=b"".join(collecting.chunks),
            sample_rate=start.sample_rate,
            channels=start.channels,
            sample_format=start.sample_format,
            session_id=start.session_id,
            context=start.context,
            turn_id=turn_id,
            # Clamped, not refused: one 4096-token turn would hold its whole batch.
            max_new_tokens=self.settings.clamp_max_new_tokens(start.max_new_tokens),
        )
        running = _Running(turn_id=turn_id)
        self.running[turn_id] = running
        running.task = asyncio.get_running_loop().create_task(
            self._run_turn(running, turn, time.perf_counter())
        )

    async def _on_cancel(self, turn_id: str) -> None:
        if self.collecting.pop(turn_id, None) is not None:
            self.service.turn_closed()
            self._reject(turn_id)
            metrics.TURNS.labels(outcome="cancelled").inc()
            await self.send({"type": "cancelled", "turn_id": turn_id})
            return
        running = self.running.get(turn_id)
        if running is not None:
            running.cancel("client")
        # Otherwise the turn already has its final message: a racing cancel is a no-op.

    # -- running turns -----------------------------------------------------------------------
    async def _run_turn(self, running: _Running, turn: Turn, ended: float) -> None:
        turn_id = turn.turn_id
        events: AsyncIterator[GuardEvent] = self.service.guard.respond(turn)
        first = True
        outcome = "error"
        try:
            try:
                async with asyncio.timeout(self.settings.turn_timeout_s):
                    async for event in events:
                        if first and isinstance(event, TextDelta):
                            first = False
                            metrics.END_TO_FIRST_TOKEN_SECONDS.observe(time.perf_counter() - ended)
                        final = isinstance(event, TurnDecision | TurnError)
                        if final:
                            running.final_sent = True
                        await self.send(event_to_message(event))
                        if isinstance(event, TurnError):
                            metrics.ERRORS.labels(kind=event.kind).inc()
                        if final:
                            outcome = "decision" if isinstance(event, TurnDecision) else "error"
                            break
                    else:
                        running.final_sent = True
                        await self.send_error(
                            turn_id, "internal", "the guard ended the turn without a decision"
                        )
            except TimeoutError:
                running.final_sent = True
                await self.send_error(
                    turn_id,
                    "timeout",
                    f"the turn took longer than {self.settings.turn_timeout_s:g} s and was "
                    "cancelled: retry, or raise --turn-timeout-s",
                )
            except asyncio.CancelledError:
                reason = running.cancel_reason
                if reason is None:
                    raise  # not ours (event loop shutting down)
                if reason == "client":
                    outcome = "cancelled"
                    await self.send({"type": "cancelled", "turn_id": turn_id})
                elif reason == "shutdown":
                    await self.send_error(
                        turn_id,
                        "shutting_down",
                        "the server shut down before the turn finished: retry it",
                    )
                else:
                    outcome = "disconnected"
            except Exception as error:
                log.exception("server.turn_failed", turn_id=turn_id)
                running.final_sent = True
                await self.send_error(
                    turn_id, "internal", f"the server failed on this turn ({type(error).__name__})"
                )
        finally:
            # Bookkeeping first: nothing below may be skipped by an exception.
            self.running.pop(turn_id, None)
            self.service.turn_closed()
            metrics.TURNS.labels(outcome=outcome).inc()
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()  # barge-in: closing the iterator cancels generation

    async def _cancel_all(self, reason: CancelReason) -> None:
        tasks = [r.task for r in self.running.values() if r.task is not None]
        for running in list(self.running.values()):
            running.cancel(reason)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def shutdown(self) -> None:
        """End open turns (shutting_down) and close with 1001 so clients reconnect elsewhere."""
        self._shutdown = True
        for turn_id in list(self.collecting):
            await self._fail_turn(
                turn_id, "shutting_down", "the server shut down before turn.end: retry the turn"
            )
        await self._cancel_all("shutdown")
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self.ws.close(code=CLOSE_GOING_AWAY, reason="server shutting down")


def _peek_frame_turn_id(frame: bytes) -> str | None:
    try:
        turn_id, _ = parse_audio_frame(frame[:80])
    except ProtocolError:
        return None
    return turn_id


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

    def role(request_headers: Any) -> tuple[str | None, Role | None]:
        token = bearer_token(request_headers)
        return token, settings.tokens.role_of(token)

    def denied(token: str | None) -> Response:
        metrics.AUTH_FAILURES.inc()
        if token is None:
            return JSONResponse(
                {"error": "missing bearer token: send 'Authorization: Bearer <token>'"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="sarsteer-guard"'},
            )
        return JSONResponse({"error": "this token may not use this endpoint"}, status_code=403)

    async def turns(websocket: WebSocket) -> None:
        # Browsers always send Origin on a WebSocket upgrade and let any page open one
        # (no CORS), so without this any site the operator visits could use the guard.
        origin = websocket.headers.get("origin")
        if origin is not None and not settings.origin_allowed(origin):
            shown = origin[:200]  # the peer chose it: bound what goes to logs and back
            metrics.ORIGIN_REFUSALS.inc()
            log.warning("server.origin_refused", origin=shown)
            body = {
                "error": f"web origin {shown!r} may not open this socket: allow it with "
                "--allow-origin or SARSTEER_GUARD_ALLOWED_ORIGINS"
            }
            await websocket.send_denial_response(JSONResponse(body, status_code=403))
            return
        if settings.tokens.worker:
            token, granted = role(websocket.headers)
            if granted != "worker":
                await websocket.send_denial_response(denied(token))
                return
        if service.draining:
            await websocket.send_denial_response(
                JSONResponse({"error": "shutting down: connect to another replica"}, 503)
            )
            return
        await websocket.accept()
        await TurnConnection(websocket, service).run()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

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
        if settings.tokens.configured:
            token, granted = role(request.headers)
            if granted is None:
                return denied(token)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.begin_start()
        try:
            yield
        finally:
            await service.close()

    app = Starlette(
        routes=[
            WebSocketRoute(TURNS_PATH, turns),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ],
        lifespan=lifespan,
    )
    app.state.service = service
    return app
