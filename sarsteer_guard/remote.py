"""RemoteGuard: the Guard's API over the ``sarsteer.v1`` WebSocket protocol.

Voice-agent workers run on CPU hosts and the model on GPU hosts; RemoteGuard lets a
worker use a guard server exactly as it would an in-process
:class:`~sarsteer_guard.guard.core.Guard` (same :class:`SpeechGuard` protocol, same
event dataclasses), so integrations never know the difference. One WebSocket carries
all of a worker's turns, multiplexed by ``turn_id``; a lost connection fails the turns
in flight with ``TurnError(kind="connection")`` (a voice turn must never hang) and the
next turn reconnects with exponential backoff and full jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.errors import AudioError, GuardError, GuardOptionsError
from sarsteer_guard.guard.edge import checked_turn
from sarsteer_guard.guard.events import GuardEvent, Turn, TurnDecision, TurnError
from sarsteer_guard.log import get_logger
from sarsteer_guard.server.protocol import (
    PROTOCOL,
    TURN_ID_RE,
    ProtocolError,
    audio_frame_overhead,
    dumps,
    encode_audio_frame,
    message_to_event,
)
from sarsteer_guard.server.settings import WORKER_TOKEN_ENV

log = get_logger(__name__)


class RemoteGuardError(GuardError):
    """The guard server cannot be reached, refused the token, or speaks another protocol."""

    kind = "connection"


class RemoteAuthError(RemoteGuardError):
    """The server refused the bearer token (retrying cannot help)."""

    kind = "auth"


@dataclass
class _InFlight:
    queue: asyncio.Queue[GuardEvent]
    ws: ClientConnection


class RemoteGuard:
    """A :class:`SpeechGuard` served by ``sarsteer-guard serve`` over WebSocket.

    Construction does no I/O; ``await start()`` connects (or the first turn does).

    Args:
        url: the server's turn endpoint, e.g. ``ws://guard:8765/v1/turns``; several
            (a sequence, or one string separated by commas) are replicas to fail over
            between: each connection tries them in turn from the one last used, moving
            on at once when one is down, backing off only after a whole round failed.
        token: worker bearer token; None reads ``SARSTEER_GUARD_TOKEN``.
        connect_timeout_s: limit for one TCP + WebSocket handshake.
        max_retries: reconnect attempts after the first one fails.
        backoff_base_s / backoff_max_s: exponential backoff bounds; each wait is drawn
            uniformly below the bound (full jitter) so many workers do not reconnect in step.
        turn_timeout_s: last-resort limit on one turn's events (the server has its own).
        chunk_bytes: PCM bytes per binary frame (capped by the server's message limit).
        on_turn_sent: called with the turn id right after ``turn.end`` is sent, i.e. at
            end of speech as the server sees it: the start of voice-latency measurements.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        connect_timeout_s: float = 5.0,
        max_retries: int = 5,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 5.0,
        turn_timeout_s: float = 120.0,
        chunk_bytes: int = 32768,
        on_turn_sent: Callable[[str], None] | None = None,
    ) -> None:
        urls = url.split(",") if isinstance(url, str) else list(url)
        self.urls = [u.strip() for u in urls if u.strip()]
        if not self.urls:
            raise GuardOptionsError("RemoteGuard needs a guard URL: ws://host:port/v1/turns")
        self.url = self.urls[0]  # the replica in use (or tried last)
        self._token = token if token is not None else (os.environ.get(WORKER_TOKEN_ENV) or None)
        self.connect_timeout_s = connect_timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.turn_timeout_s = turn_timeout_s
        self.chunk_bytes = chunk_bytes
        self.on_turn_sent = on_turn_sent
        self.limits: dict[str, Any] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._turns: dict[str, _InFlight] = {}
        self._lock = asyncio.Lock()
        self._closed = False
        self._warned_history = False

    def __repr__(self) -> str:  # never show the token
        return f"RemoteGuard(url={self.url!r}, connected={self.ready})"

    @property
    def ready(self) -> bool:
        """True while connected to the server."""
        return self._ws is not None and self._ws.state is State.OPEN

    @property
    def queue_depth(self) -> int | None:
        """Unknown from the client side: the server's queue is behind the connection."""
        return None

    def forget_session(self, session_id: str) -> None:
        """Nothing to do locally: the server forgets private sessions when the connection closes."""

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (with retries); raises RemoteGuardError if the server stays unreachable."""
        self._closed = False
        await self._connection()

    async def close(self) -> None:
        """Close the connection; turns still in flight end with a connection error."""
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        self._fail_in_flight(None, "the RemoteGuard was closed during the turn")

    async def __aenter__(self) -> RemoteGuard:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connection(self) -> ClientConnection:
        async with self._lock:
            if self._closed:
                raise RemoteGuardError("the RemoteGuard is closed: call start() again to reuse it")
            if self._ws is not None and self._ws.state is State.OPEN:
                return self._ws
            last = "no attempt made"
            n, start = len(self.urls), self.urls.index(self.url)
            for attempt in range((self.max_retries + 1) * n):
                if attempt and attempt % n == 0:  # a whole round failed: back off
                    rounds = attempt // n
                    bound = min(self.backoff_max_s, self.backoff_base_s * 2 ** (rounds - 1))
                    await asyncio.sleep(random.uniform(0, bound))  # noqa: S311 - jitter, not crypto
                self.url = self.urls[(start + attempt) % n]
                try:
                    ws = await self._open()
                except RemoteAuthError:
                    raise
                except (OSError, TimeoutError, InvalidHandshake, RemoteGuardError) as error:
                    last = f"{type(error).__name__}: {error}"
                    log.warning(
                        "remote.connect_failed", url=self.url, attempt=attempt + 1, error=last
                    )
                    continue
                self._ws = ws
                self._reader = asyncio.get_running_loop().create_task(self._read(ws))
                log.info("remote.connected", url=self.url, attempts=attempt + 1)
                return ws
            raise RemoteGuardError(
                f"cannot reach the guard server at {', '.join(self.urls)} after "
                f"{self.max_retries + 1} attempts each ({last}); check that it runs and that "
                "the URL is right"
            )

    async def _open(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        try:
            ws = await connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.connect_timeout_s,
                compression=None,
                max_size=4 << 20,
            )
        except InvalidStatus as error:
            status = error.response.status_code
            if status in (401, 403):
                raise RemoteAuthError(
                    f"the guard server refused the token (HTTP {status}): set "
                    f"{WORKER_TOKEN_ENV} to a worker token"
                ) from None
            raise RemoteGuardError(f"the guard server answered HTTP {status}") from None
        except InvalidURI:
            raise RemoteAuthError(
                f"invalid guard URL {self.url!r}: expected ws://host:port/v1/turns"
            ) from None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                hello = json.loads(await ws.recv())
        except (TimeoutError, ConnectionClosed, json.JSONDecodeError, TypeError) as error:
            await ws.close()
            raise RemoteGuardError(
                f"no hello from the guard server ({type(error).__name__})"
            ) from None
        if not isinstance(hello, dict) or hello.get("protocol") != PROTOCOL:
            await ws.close()
            got = hello.get("protocol") if isinstance(hello, dict) else hello
            raise RemoteAuthError(
                f"the server speaks {got!r}, this client {PROTOCOL!r}: upgrade the older side"
            )
        self.limits = dict(hello.get("limits") or {})
        return ws

    async def _read(self, ws: ClientConnection) -> None:
        """Route server messages to their turns until the connection ends."""
        reason = "the connection to the guard server was lost during the turn: retry the turn"
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    continue
                try:
                    message = json.loads(raw)
                except json.JSONDecodeError:
                    log.warning("remote.bad_message", size=len(raw))
                    continue
                event = message_to_event(message) if isinstance(message, dict) else None
                if event is None:
                    continue
                in_flight = self._turns.get(event.turn_id)
                if in_flight is None:
                    if isinstance(event, TurnError) and not event.turn_id:
                        log.warning("remote.server_error", kind=event.kind, message=event.message)
                    continue
                in_flight.queue.put_nowait(event)
        except ConnectionClosed as closed:
            if closed.rcvd is not None and closed.rcvd.code == 1001:
                reason = "the guard server shut down during the turn: retry the turn"
        finally:
            if self._ws is ws:
                self._ws = None
            self._fail_in_flight(ws, reason)

    def _fail_in_flight(self, ws: ClientConnection | None, message: str) -> None:
        for turn_id, in_flight in list(self._turns.items()):
            if ws is None or in_flight.ws is ws:
                in_flight.queue.put_nowait(TurnError(turn_id, "connection", message))

    # -- turns -------------------------------------------------------------------------------
    async def respond(self, turn: Turn) -> AsyncIterator[GuardEvent]:
        """Stream one turn's events from the server; closing the iterator sends turn.cancel."""
        turn_id = turn.turn_id
        if not TURN_ID_RE.fullmatch(turn_id):
            yield TurnError(turn_id, "bad_request", "turn_id must be 1-64 of [A-Za-z0-9_.:-]")
            return
        if turn_id in self._turns:
            yield TurnError(turn_id, "bad_request", "this turn_id is already in flight")
            return
        if turn.history is not None and not self._warned_history:
            self._warned_history = True
            log.warning("remote.history_ignored", hint="the server keeps history per session_id")
        try:
            turn, _ = checked_turn(turn)  # the Guard edge's rules: same outcome as in-process
            pcm, sample_format = _pcm(turn)
            start = _start_message(turn, sample_format)
            ws = await self._connection()
        except GuardError as error:
            yield TurnError(turn_id, error.kind, str(error))
            return
        in_flight = _InFlight(asyncio.Queue(), ws)
        self._turns[turn_id] = in_flight
        finished = False
        try:
            try:
                await self._send_turn(ws, turn.turn_id, start, pcm)
            except ConnectionClosed:
                finished = True
                yield TurnError(
                    turn_id, "connection", "the connection dropped while sending: retry the turn"
                )
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.turn_timeout_s
            while True:
                try:
                    event = await asyncio.wait_for(in_flight.queue.get(), deadline - loop.time())
                except TimeoutError:
                    event = TurnError(
                        turn_id,
                        "timeout",
                        f"no decision from the guard server within {self.turn_timeout_s:g} s",
                    )
                    await self._cancel(in_flight.ws, turn_id)
                if isinstance(event, TurnDecision | TurnError):
                    finished = True
                    yield event
                    return
                yield event
        finally:
            self._turns.pop(turn_id, None)
            if not finished:
                await self._cancel(in_flight.ws, turn_id)

    async def _send_turn(self, ws: ClientConnection, turn_id: str, start: str, pcm: bytes) -> None:
        await ws.send(start)
        limit = int(self.limits.get("max_message_bytes", self.chunk_bytes))
        chunk = max(1024, min(self.chunk_bytes, limit - audio_frame_overhead(turn_id)))
        for offset in range(0, len(pcm), chunk):
            await ws.send(encode_audio_frame(turn_id, pcm[offset : offset + chunk]))
        await ws.send(dumps({"type": "turn.end", "turn_id": turn_id}))
        if self.on_turn_sent is not None:
            self.on_turn_sent(turn_id)

    async def _cancel(self, ws: ClientConnection, turn_id: str) -> None:
        """Best effort turn.cancel (barge-in); a dead connection has cancelled it already."""
        if ws.state is not State.OPEN:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.connect_timeout_s):
                await ws.send(dumps({"type": "turn.cancel", "turn_id": turn_id}))


def _start_message(turn: Turn, sample_format: str) -> str:
    """The turn's ``turn.start`` frame; :class:`GuardError` for what JSON cannot carry.

    NaN/Infinity and lone surrogates in the context or session id would make the frame
    unencodable (or be refused by the server): the turn fails here, before any I/O.
    """
    start: dict[str, Any] = {
        "type": "turn.start",
        "turn_id": turn.turn_id,
        "session_id": turn.session_id,
        "context": dict(turn.context),
        "sample_rate": turn.sample_rate,
        "channels": turn.channels,
        "format": sample_format,
    }
    if turn.max_new_tokens is not None:
        start["max_new_tokens"] = turn.max_new_tokens
    try:
        text = dumps(start)
        text.encode("utf-8")
    except (ValueError, UnicodeEncodeError) as error:  # ValueError: NaN/Infinity
        raise ProtocolError(
            f"the turn's context or session_id cannot be sent ({error}): use finite numbers "
            "and valid text"
        ) from None
    return text


def _pcm(turn: Turn) -> tuple[bytes, str]:
    """The turn's audio as wire PCM: bytes as given, float arrays as int16 (half the bytes)."""
    audio = turn.audio
    if isinstance(audio, np.ndarray):
        if audio.dtype == np.int16:
            return np.ascontiguousarray(audio, dtype="<i2").tobytes(), "int16"
        if not np.issubdtype(audio.dtype, np.floating):
            raise AudioError(f"audio arrays must be int16 or float, got {audio.dtype}")
        return float_to_pcm16(audio), "int16"
    return bytes(audio), turn.sample_format
