"""One ``/v1/realtime`` WebSocket: an OpenAI Realtime session answered by the guard.

State per connection: the :class:`~.session.SessionConfig`, the input audio buffer,
the conversation items (bounded, oldest dropped), user audio committed but not yet
answered, and at most one active response. Each response is one guard turn run by the
shared :func:`~sarsteer_guard.server.turns.run_turn` (timeout, cancellation, drain), so
the turn rules of ``sarsteer.v1`` hold here too. The guard keeps the conversation
history itself under a session id private to this connection, forgotten when it closes.

Lifecycle (send deadlines, abort, the 1011 catch-all, registration) is
:class:`~sarsteer_guard.server.lifecycle.BaseConnection`'s, shared with ``/v1/turns``.
Audio memory (the input buffer, committed audio, a running response's turn) is charged to
the connection's and the server's byte budgets; past either, the newest audio is dropped
and an ``error`` says why.

Barge-in: with server VAD and ``interrupt_response``, speech starting while a response
runs cancels it (``response.done`` status ``cancelled``, reason ``turn_detected``);
``response.cancel`` does the same for clients that detect turns themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, assert_never

import numpy as np
from starlette.websockets import WebSocket

from sarsteer_guard.audio.pcm import FloatArray
from sarsteer_guard.audio.vad import VAD_RATE
from sarsteer_guard.guard.events import Turn
from sarsteer_guard.server import metrics
from sarsteer_guard.server.auth import TokenBucket
from sarsteer_guard.server.lifecycle import BaseConnection
from sarsteer_guard.server.protocol import CLOSE_GOING_AWAY
from sarsteer_guard.server.realtime.audio import (
    InputAudioBuffer,
    SpeechStarted,
    SpeechStopped,
    decode,
    to_vad_rate,
)
from sarsteer_guard.server.realtime.errors import RealtimeError
from sarsteer_guard.server.realtime.events import (
    AudioAppend,
    AudioClear,
    AudioCommit,
    ClientEvent,
    ItemCreate,
    ItemRef,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
    parse_event,
)
from sarsteer_guard.server.realtime.session import SessionConfig, apply_update, client_text
from sarsteer_guard.server.realtime.wire import (
    CancelReason,
    ResponseStream,
    error_event,
    message_item,
    new_id,
    server_event,
    user_audio_item,
)
from sarsteer_guard.server.service import GuardService
from sarsteer_guard.server.turns import RunningTurn, run_turn

#: Conversation items remembered per connection (the guard keeps the real history).
MAX_ITEMS = 256


class RealtimeConnection(BaseConnection):
    """One realtime session on one WebSocket."""

    def __init__(self, websocket: WebSocket, service: GuardService, model: str | None) -> None:
        super().__init__(websocket, service)
        self._model_error: RealtimeError | None = None
        try:
            name = None if model is None else client_text(model, "model", identifier=True)
        except RealtimeError as error:  # told after session.created (nothing is sent before)
            name, self._model_error = None, error
        self.config = SessionConfig(id=new_id("sess"), model=name or "sarsteer-guard")
        self.buffer = self._new_buffer()
        self.items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.pending: list[FloatArray] = []  # committed user audio, 16 kHz, not yet answered
        self.speech_item_id: str | None = None
        self.response: ResponseStream | None = None
        self.running: RunningTurn | None = None
        self.bucket = TokenBucket(self.settings.rate_limit_per_s)
        self.session_id = f"realtime-{self.config.id}"  # the guard's history; private
        self._used_session = False
        self._charged = 0  # audio bytes taken from both budgets
        self._turn_bytes = 0  # audio of the running response's turn

    def _new_buffer(self) -> InputAudioBuffer:
        c = self.config
        return InputAudioBuffer(c.input_format, c.turn_detection, self.settings.max_turn_s)

    @property
    def open_turns(self) -> int:
        """1 while a response runs: the drain waits for it.

        Speech still being heard is not counted (nothing would wake the drain when it
        ends); its response is refused with ``sarsteer_shutting_down`` instead.
        """
        return int(self.running is not None)

    # -- sending (send() is BaseConnection's, deadlined) --------------------------------------
    async def send_error(self, error: RealtimeError) -> None:
        """An ``error`` event (counted like the turn protocol's errors)."""
        metrics.ERRORS.labels(kind=error.code).inc()
        await self.send(error_event(error))

    # -- receiving (BaseConnection's loop) ----------------------------------------------------
    async def _greet(self) -> None:
        await self.send(server_event("session.created", session=self.config.to_wire()))
        if self._model_error is not None:
            await self.send_error(self._model_error)

    async def _on_frame(self, frame: str | bytes) -> None:
        """Answer one event; whatever it did, the held audio is then charged (or dropped)."""
        try:
            event = parse_event(frame, max_bytes=self.settings.max_message_bytes)
        except RealtimeError as error:
            await self.send_error(error)
            return
        try:
            await self._handle(event)
        except RealtimeError as error:
            await self.send_error(error.with_event_id(event.event_id))
        over = self._settle_audio()
        if over is not None:
            await self.send_error(over.with_event_id(event.event_id))

    async def _handle(self, event: ClientEvent) -> None:
        match event:
            case SessionUpdate():
                await self._on_session_update(event)
            case AudioAppend():
                await self._on_append(event.audio)
            case AudioCommit():
                item_id, self.speech_item_id = self.speech_item_id, None
                await self._commit(self.buffer.commit(), item_id or new_id("item"))
            case AudioClear():
                self.buffer.clear()
                self.speech_item_id = None
                await self.send(server_event("input_audio_buffer.cleared"))
            case ItemCreate():
                await self._on_item_create(event)
            case ItemRef():
                await self._on_item_ref(event)
            case ResponseCreate():
                await self._start_response(event)
            case ResponseCancel():
                await self._on_cancel(event)
            case _:
                assert_never(event)

    # -- session and audio -------------------------------------------------------------------
    async def _on_session_update(self, event: SessionUpdate) -> None:
        new = apply_update(self.config, event.session, max_turn_s=self.settings.max_turn_s)
        audio_changed = (new.input_format, new.turn_detection) != (
            self.config.input_format,
            self.config.turn_detection,
        )
        self.config = new
        if audio_changed:
            self.buffer = self._new_buffer()
            self.speech_item_id = None
        await self.send(server_event("session.updated", session=new.to_wire()))

    async def _on_append(self, audio: bytes) -> None:
        """Every speech start/stop the audio caused is sent, then the first error (if any)."""
        first: RealtimeError | None = None
        for change in self.buffer.append(audio):
            try:
                if isinstance(change, SpeechStarted):
                    await self._speech_started(change.audio_start_ms)
                else:
                    await self._speech_stopped(change)
            except RealtimeError as error:
                first = first or error
        if first is not None:
            raise first

    async def _speech_started(self, audio_start_ms: int) -> None:
        vad = self.config.turn_detection
        if vad is not None and vad.interrupt_response:
            await self._cancel_response("turn_detected")
        self.speech_item_id = new_id("item")
        await self.send(
            server_event(
                "input_audio_buffer.speech_started",
                audio_start_ms=audio_start_ms,
                item_id=self.speech_item_id,
            )
        )

    async def _speech_stopped(self, stopped: SpeechStopped) -> None:
        item_id, self.speech_item_id = self.speech_item_id or new_id("item"), None
        await self.send(
            server_event(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=stopped.audio_end_ms,
                item_id=item_id,
            )
        )
        await self._commit(stopped.audio, item_id)
        vad = self.config.turn_detection
        if vad is not None and vad.create_response and self.running is None:
            await self._start_response(ResponseCreate(None, {}))

    async def _commit(self, audio: FloatArray, item_id: str) -> None:
        """A user turn joins the conversation and waits for a response."""
        self._check_pending(audio.size)
        self.pending.append(audio)
        previous = next(reversed(self.items), None) if self.items else None
        await self.send(
            server_event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        )
        await self._add_item(user_audio_item(item_id), previous)

    def _check_pending(self, samples: int) -> None:
        if not self._fits_more(samples * 4):  # float32
            raise self._budget_error(samples * 4)
        held = sum(a.size for a in self.pending)
        if held + samples > self.settings.max_turn_s * VAD_RATE:
            raise RealtimeError(
                "input_audio_buffer_too_large",
                f"more than {self.settings.max_turn_s:g} s of user audio waits for a response: "
                "create a response (response.create) before committing more",
            )

    # -- audio budgets ----------------------------------------------------------------------
    def _held_bytes(self) -> int:
        """Audio this connection holds: input buffer, committed audio, the running turn."""
        return self.buffer.held_bytes + sum(a.nbytes for a in self.pending) + self._turn_bytes

    def _fits_more(self, size: int) -> bool:
        """True if both budgets can take what is held now plus ``size`` bytes."""
        delta = self._held_bytes() + size - self._charged
        return delta <= 0 or (
            self.audio_budget.fits(delta) and self.service.audio_budget.fits(delta)
        )

    def _charge(self) -> bool:
        """Bring both budgets' charge to what is held now; False (nothing taken) if over."""
        held = self._held_bytes()
        if not self._fits_more(0):
            return False
        delta = held - self._charged
        if delta >= 0:
            self.audio_budget.take(delta)
            self.service.audio_budget.take(delta)
        else:
            self.audio_budget.give(-delta)
            self.service.audio_budget.give(-delta)
        self._charged = held
        return True

    def _settle_audio(self) -> RealtimeError | None:
        """Charge the held audio; past a budget drop the newest (buffer, then committed).

        Invariant after it: ``_charged == _held_bytes()`` and neither budget is over. The
        running turn's audio was charged as committed audio, so dropping the rest fits.
        """
        if self._charge():
            return None
        error = self._budget_error()
        self.buffer.clear()
        self.speech_item_id = None
        if not self._charge():
            self.pending = []
            self._charge()
        return error

    def _release_audio(self) -> None:
        """Give back everything charged (the connection is gone)."""
        self.audio_budget.give(self._charged)
        self.service.audio_budget.give(self._charged)
        self._charged = 0

    def _budget_error(self, size: int = 0) -> RealtimeError:
        """Which budget the held audio plus ``size`` bytes overruns, as the error to send."""
        s = self.settings
        if not self.audio_budget.fits(max(0, self._held_bytes() + size - self._charged)):
            return RealtimeError(
                "input_audio_buffer_too_large",
                f"this session holds {s.max_audio_mb_per_connection:g} MiB of audio "
                "(--max-audio-mb-per-connection): the newest audio was dropped; commit and "
                "answer turns sooner",
            )
        return RealtimeError(
            "sarsteer_audio_budget_exceeded",
            f"the server holds {s.max_audio_mb:g} MiB of audio (--max-audio-mb): the newest "
            "audio was dropped; retry shortly",
            error_type="server_error",
        )

    async def _add_item(self, item: dict[str, Any], previous: str | None) -> None:
        self.remember(item)
        await self.send(
            server_event("conversation.item.added", previous_item_id=previous, item=item)
        )
        await self.send(
            server_event("conversation.item.done", previous_item_id=previous, item=item)
        )
        if item["role"] == "user" and self.config.transcription is not None:
            # Asked for and impossible: say so per item, never leave the client waiting.
            error = RealtimeError(
                "unsupported_feature",
                "sarsteer-guard does not transcribe input audio",
                param="session.audio.input.transcription",
            )
            await self.send(
                server_event(
                    "conversation.item.input_audio_transcription.failed",
                    item_id=item["id"],
                    content_index=0,
                    error={
                        "type": "invalid_request_error",
                        "code": error.code,
                        "message": error.message,
                        "param": error.param,
                    },
                )
            )

    def remember(self, item: dict[str, Any]) -> None:
        """Keep an item for retrieve/delete; the oldest go beyond MAX_ITEMS."""
        self.items[item["id"]] = item
        while len(self.items) > MAX_ITEMS:
            self.items.popitem(last=False)

    # -- items -------------------------------------------------------------------------------
    async def _on_item_create(self, event: ItemCreate) -> None:
        new = event.item
        item_id = new.id or new_id("item")
        previous = event.previous_item_id or (next(reversed(self.items)) if self.items else None)
        if new.audio is not None:
            fmt = self.config.input_format
            audio = to_vad_rate(decode(new.audio, fmt), fmt.rate)
            self._check_pending(audio.size)
            self.pending.append(audio)
            await self._add_item(user_audio_item(item_id), previous)
            return
        kind = "input_text" if new.role == "system" else "output_text"
        if new.role == "assistant":
            kind = "output_text"
        await self._add_item(
            message_item(item_id, new.role, [{"type": kind, "text": new.text}]), previous
        )

    async def _on_item_ref(self, event: ItemRef) -> None:
        item = self.items.get(event.item_id)
        if item is None:
            raise RealtimeError(
                f"item_{event.action}_invalid_item_id",
                f"no conversation item {event.item_id!r} on this session",
                param="item_id",
            )
        if event.action == "delete":
            del self.items[event.item_id]
            await self.send(server_event("conversation.item.deleted", item_id=event.item_id))
        elif event.action == "retrieve":
            await self.send(server_event("conversation.item.retrieved", item=item))
        else:  # text has no audio to cut: acknowledged, the item is unchanged
            await self.send(
                server_event(
                    "conversation.item.truncated",
                    item_id=event.item_id,
                    content_index=0,
                    audio_end_ms=event.audio_end_ms,
                )
            )

    # -- responses ---------------------------------------------------------------------------
    async def _start_response(self, request: ResponseCreate) -> None:
        if self.running is not None:
            raise RealtimeError(
                "conversation_already_has_active_response",
                "a response is already in progress: cancel it or wait for response.done",
            )
        self._admit()
        previous = next(reversed(self.items)) if self.items else None
        stream = ResponseStream(
            self.send,
            response_id=new_id("resp"),
            metadata=request.metadata,
            previous_item_id=previous,
            on_item=self.remember,
        )
        await stream.created()
        if not self.pending:
            await stream.incomplete("sarsteer_no_user_audio")
            return
        tokens = request.max_output_tokens or self.config.max_output_tokens
        audio = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.pending = []
        self._turn_bytes = audio.nbytes  # charged as committed audio until the turn ends
        self._used_session = True
        turn = Turn(
            audio=audio,
            sample_rate=VAD_RATE,
            sample_format="float32",
            session_id=self.session_id,
            context=dict(self.config.context),
            max_new_tokens=self.settings.clamp_max_new_tokens(tokens),
        )
        running = RunningTurn(turn=turn, ended_at=time.perf_counter())
        self.response, self.running = stream, running
        metrics.OPEN_TURNS.inc()
        running.task = asyncio.get_running_loop().create_task(self._run(running, stream))

    def _admit(self) -> None:
        """Refuse a response the server cannot take now (drain, readiness, rate)."""
        if self.service.draining or self._shutdown:
            raise RealtimeError(
                "sarsteer_shutting_down",
                "the server is shutting down: reconnect (to another replica)",
                error_type="server_error",
            )
        ready, reason = self.service.readiness()
        if not ready:
            raise RealtimeError(
                "sarsteer_not_ready",
                f"{reason}; retry shortly (GET /readyz)",
                error_type="server_error",
            )
        if not self.bucket.take():
            raise RealtimeError(
                "rate_limit_exceeded",
                f"more than "
                f"{self.settings.rate_limit_per_s:g} responses per second on "
                "this session: slow down",
            )

    async def _run(self, running: RunningTurn, stream: ResponseStream) -> None:
        try:
            await run_turn(
                self.service.guard, running, stream, timeout_s=self.settings.turn_timeout_s
            )
        finally:
            # Nothing above may skip this: the drain counts on every turn being closed.
            if self.running is running:
                self.response, self.running = None, None
                self._turn_bytes = 0
                self._charge()  # gives back: holding less always fits
            self.service.turn_closed()
            metrics.TURNS.labels(outcome=running.outcome).inc()

    async def _on_cancel(self, event: ResponseCancel) -> None:
        active = self.response
        if active is None or (event.response_id and event.response_id != active.id):
            raise RealtimeError(
                "response_cancel_not_active", "there is no active response to cancel"
            )
        await self._cancel_response("client_cancelled")

    async def _cancel_response(self, reason: CancelReason) -> None:
        """Cancel the active response (if any) and wait for its ``response.done``."""
        running, stream = self.running, self.response
        if running is None or stream is None:
            return
        stream.cancel_reason = reason
        if running.cancel("client") and running.task is not None:
            await asyncio.gather(running.task, return_exceptions=True)

    # -- ending ------------------------------------------------------------------------------
    async def _cancel_running(self, reason: str) -> None:
        running = self.running
        if running is not None and running.task is not None:
            running.cancel("shutdown" if reason == "shutdown" else "disconnect")
            await asyncio.gather(running.task, return_exceptions=True)

    async def _closed_by_peer(self) -> None:
        """The socket is gone: cancel the response, free its audio, forget the session."""
        self._closed = True
        await self._cancel_running("disconnect")
        self.buffer.clear()
        self.pending = []
        self._release_audio()
        if self._used_session:
            self.service.forget_session(self.session_id)
        self._unregister()

    async def shutdown(self) -> None:
        """The drain deadline passed: fail the response and close with 1001 (deadlined)."""
        self._shutdown = True
        await self._cancel_running("shutdown")
        await self._close(CLOSE_GOING_AWAY, "server shutting down")
