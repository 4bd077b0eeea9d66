"""One ``sarsteer.v1`` WebSocket: many turns, multiplexed by ``turn_id``.

A turn moves through three places on a connection: ``collecting`` (after ``turn.start``,
audio arriving), ``running`` (after ``turn.end``, the guard's events streaming back, see
:mod:`.turns`), then gone, with exactly one final message (``decision``, ``error`` or
``cancelled``). A turn that got its final error early is remembered for a while in
``rejected`` so its late audio and ``turn.end`` are dropped quietly. Anything a client gets
wrong is answered with an ``error`` for that turn (or for the connection, ``turn_id``
null) and the connection stays usable. Memory is bounded: ``max_open_turns`` turns of at
most ``max_turn_s`` audio each, and ``_REJECTED_MEMORY`` remembered ids.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, assert_never

from starlette.websockets import WebSocket

from sarsteer_guard._version import __version__
from sarsteer_guard.audio.limits import check_clip_length
from sarsteer_guard.errors import AudioError
from sarsteer_guard.guard.events import GuardEvent, Turn
from sarsteer_guard.server import metrics
from sarsteer_guard.server.auth import TokenBucket
from sarsteer_guard.server.lifecycle import BaseConnection
from sarsteer_guard.server.limits import TurnAudio
from sarsteer_guard.server.protocol import (
    BYTES_PER_SAMPLE,
    CLOSE_GOING_AWAY,
    PROTOCOL,
    AudioMsg,
    ProtocolError,
    TurnCancelMsg,
    TurnEndMsg,
    TurnStartMsg,
    error_message,
    event_to_message,
    new_session_id,
    parse_message,
)
from sarsteer_guard.server.service import GuardService
from sarsteer_guard.server.settings import ServerSettings
from sarsteer_guard.server.turns import CancelReason, RunningTurn, run_turn

#: Turn ids remembered after an early final error, so their late audio is dropped quietly.
_REJECTED_MEMORY = 256


def hello_message(settings: ServerSettings) -> dict[str, Any]:
    """The first message on every connection: protocol and the limits clients must respect."""
    s = settings
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
            "max_audio_mb_per_connection": s.max_audio_mb_per_connection,
            "send_timeout_s": s.send_timeout_s,
        },
    }


@dataclass
class _Collecting:
    """A turn receiving audio: held at most at the model's size, ``limit`` bytes at most."""

    start: TurnStartMsg
    audio: TurnAudio
    limit: int


class TurnConnection(BaseConnection):
    """One WebSocket carrying many turns; also the :class:`~.turns.TurnOutput` of its turns."""

    def __init__(self, websocket: WebSocket, service: GuardService) -> None:
        super().__init__(websocket, service)
        self.collecting: dict[str, _Collecting] = {}
        self.running: dict[str, RunningTurn] = {}
        self.rejected: OrderedDict[str, None] = OrderedDict()
        self.bucket = TokenBucket(self.settings.rate_limit_per_s)
        # Turns that name no session get this one: private to the connection, forgotten
        # when it closes (a shared default would mix strangers' conversations).
        self.default_session_id = new_session_id()
        self._default_session_used = False
        self._held: dict[str, int] = {}  # audio bytes charged per open turn

    @property
    def open_turns(self) -> int:
        """Turns receiving audio or generating on this connection."""
        return len(self.collecting) + len(self.running)

    # -- sending (TurnOutput; send() is BaseConnection's, deadlined) ---------------------------
    async def event(self, event: GuardEvent) -> None:
        """A guard event as its wire message."""
        await self.send(event_to_message(event))

    async def error(self, turn_id: str | None, kind: str, message: str) -> None:
        """Send an ``error`` message and count it."""
        metrics.ERRORS.labels(kind=kind).inc()
        await self.send(error_message(turn_id, kind, message))

    async def cancelled(self, turn_id: str) -> None:
        """The final message of a cancelled turn."""
        await self.send({"type": "cancelled", "turn_id": turn_id})

    # -- receiving (BaseConnection's loop) ----------------------------------------------------
    async def _greet(self) -> None:
        await self.send(hello_message(self.settings))

    async def _on_frame(self, frame: str | bytes) -> None:
        try:
            await self._handle(frame)
        except ProtocolError as error:
            await self._protocol_error(error)

    async def _handle(self, frame: str | bytes) -> None:
        message = parse_message(
            frame,
            max_bytes=self.settings.max_message_bytes,
            default_session_id=self.default_session_id,
        )
        match message:
            case TurnStartMsg():
                await self._on_start(message)
            case AudioMsg(turn_id=turn_id, pcm=pcm):
                await self._on_audio(turn_id, pcm)
            case TurnEndMsg(turn_id=turn_id):
                await self._on_end(turn_id)
            case TurnCancelMsg(turn_id=turn_id):
                await self._on_cancel(turn_id)
            case _:
                assert_never(message)

    async def _protocol_error(self, error: ProtocolError) -> None:
        """An error naming a turn that can still end is that turn's final message.

        One that cannot end a turn (no id, or the turn is generating or already ended)
        is sent connection-level, with a null ``turn_id``.
        A failed ``turn.start`` ends the new turn it names (even an id rejected before: a
        fresh start is a fresh turn), unless a turn of that id is open.
        """
        turn_id = error.turn_id
        is_open = turn_id in self.collecting or turn_id in self.running
        ended = turn_id in self.rejected and not error.from_start
        if turn_id is None or turn_id in self.running or ended or (is_open and error.from_start):
            await self.error(None, error.kind, str(error))
        else:
            await self._fail_turn(turn_id, error.kind, str(error))

    # -- turn messages -----------------------------------------------------------------------
    async def _on_start(self, start: TurnStartMsg) -> None:
        turn_id = start.turn_id
        if turn_id in self.collecting or turn_id in self.running:
            # No turn_id on the error: it would end the open turn of the same id.
            raise ProtocolError(
                f"turn_id {turn_id!r} is already open on this connection: use a fresh id per turn"
            )
        self.rejected.pop(turn_id, None)
        await self._settle_cancelled()
        refusal = self._admission_refusal()
        if refusal is not None:
            await self._fail_turn(turn_id, *refusal)
            return
        audio = TurnAudio(start.sample_rate, start.channels, start.sample_format)
        limit = int(self.settings.max_turn_s * audio.bytes_per_s)
        self.collecting[turn_id] = _Collecting(start=start, audio=audio, limit=limit)
        metrics.OPEN_TURNS.inc()

    async def _settle_cancelled(self) -> None:
        """At the turn limit, wait for client-cancelled turns that are still closing.

        A cancel is taken at once, but its turn closes in its own task (final ``cancelled``
        message, then the slot). Frames read in one burst, as a client barging in again and
        again sends them, can reach the next ``turn.start`` before those tasks have run; a
        client that cancelled must not be refused for turns it has cancelled. The limit
        still counts them until they close (they hold audio and a guard slot). They close
        promptly: cancelled, their last step is the final send, deadlined like every send.
        """
        if self.open_turns < self.settings.max_open_turns:
            return
        closing = [
            r.task
            for r in self.running.values()
            if r.cancel_reason == "client" and r.task is not None
        ]
        if closing:
            await asyncio.wait(closing, timeout=self.settings.send_timeout_s)

    def _admission_refusal(self) -> tuple[str, str] | None:
        """Why a new turn may not start now, as (kind, message); None admits it.

        The rate limit is checked last: only an admitted turn spends a token.
        """
        s = self.settings
        if self.service.draining or self._shutdown:
            return "shutting_down", "the server is shutting down: retry on a new connection"
        ready, reason = self.service.readiness()
        if not ready:
            return "not_ready", f"{reason}; retry shortly (GET /readyz)"
        if self.open_turns >= s.max_open_turns:
            return "rate_limited", (
                f"{self.open_turns} turns are already open on this connection (max "
                f"{s.max_open_turns}): end or cancel one first"
            )
        if not self.bucket.take():
            return "rate_limited", (
                f"more than {s.rate_limit_per_s:g} turns per second on this connection: slow down"
            )
        return None

    async def _on_audio(self, turn_id: str, pcm: bytes) -> None:
        turn = self.collecting.get(turn_id)
        if turn is None:
            if turn_id in self.rejected or turn_id in self.running:
                return  # late audio of a turn that already has its final message
            raise ProtocolError(f"audio for unknown turn_id {turn_id!r}: send turn.start first")
        try:
            held = turn.audio.convert(pcm)
        except AudioError as error:
            await self._fail_turn(turn_id, "bad_request", str(error))
            return
        refusal = self._audio_refusal(turn_id, turn, len(held))
        if refusal is not None:
            await self._fail_turn(turn_id, *refusal)
            return
        self._charge_audio(turn_id, len(held))
        turn.audio.add(held)

    def _audio_refusal(self, turn_id: str, turn: _Collecting, size: int) -> tuple[str, str] | None:
        """Why ``size`` more held bytes may not join ``turn``, as (kind, message); None if fine."""
        s = self.settings
        if turn.audio.size + size > turn.limit:
            return "bad_request", (
                f"turn {turn_id} has more than {s.max_turn_s:g} s of audio: end turns sooner "
                "(segment speech into shorter turns)"
            )
        return self._budget_refusal(size)

    def _budget_refusal(self, size: int) -> tuple[str, str] | None:
        """Why the connection's or the server's audio budget cannot take ``size`` more bytes."""
        s = self.settings
        if not self.audio_budget.fits(size):
            return "rate_limited", (
                f"this connection's open turns hold {s.max_audio_mb_per_connection:g} MiB of "
                "audio (--max-audio-mb-per-connection): end turns sooner or open fewer at once"
            )
        if not self.service.audio_budget.fits(size):
            return "rate_limited", (
                f"the server holds {s.max_audio_mb:g} MiB of audio (--max-audio-mb): retry the "
                "turn shortly"
            )
        return None

    def _charge_audio(self, turn_id: str, size: int) -> None:
        self.audio_budget.take(size)
        self.service.audio_budget.take(size)
        self._held[turn_id] = self._held.get(turn_id, 0) + size

    def _release_audio(self, turn_id: str) -> None:
        """Give a turn's held audio back to the budgets (its final message is sent)."""
        size = self._held.pop(turn_id, 0)
        self.audio_budget.give(size)
        self.service.audio_budget.give(size)

    async def _on_end(self, turn_id: str) -> None:
        collecting = self.collecting.pop(turn_id, None)
        if collecting is None:
            if turn_id in self.rejected:
                return
            raise ProtocolError(f"turn.end for unknown turn_id {turn_id!r}: send turn.start first")
        before = collecting.audio.size
        try:
            turn = self._turn(collecting)
        except AudioError as error:
            self.collecting[turn_id] = collecting
            await self._fail_turn(turn_id, "audio", str(error))
            return
        # The resampler's tail, held since finish(): checked like any audio, so the
        # budgets' ``used <= limit`` holds.
        tail = collecting.audio.size - before
        refusal = self._budget_refusal(tail)
        if refusal is not None:
            self.collecting[turn_id] = collecting
            await self._fail_turn(turn_id, *refusal)
            return
        self._charge_audio(turn_id, tail)
        if collecting.start.session_id == self.default_session_id:
            self._default_session_used = True
        running = RunningTurn(turn=turn, ended_at=time.perf_counter())
        self.running[turn_id] = running
        running.task = asyncio.get_running_loop().create_task(self._run_turn(running))

    def _turn(self, collecting: _Collecting) -> Turn:
        start = collecting.start
        audio, rate, channels, sample_format = collecting.audio.finish()
        # Refused here, before any model work, with the sentence the CLI and Guard use.
        check_clip_length(len(audio) // (BYTES_PER_SAMPLE[sample_format] * channels), rate)
        collecting.audio.chunks.clear()  # the joined copy is the only one from here on
        return Turn(
            audio=audio,
            sample_rate=rate,
            channels=channels,
            sample_format=sample_format,
            session_id=start.session_id,
            context=start.context,
            turn_id=start.turn_id,
            # Clamped, not refused: one 4096-token turn would hold its whole batch.
            max_new_tokens=self.settings.clamp_max_new_tokens(start.max_new_tokens),
        )

    async def _on_cancel(self, turn_id: str) -> None:
        if self.collecting.pop(turn_id, None) is not None:
            self._release_audio(turn_id)
            self.service.turn_closed()
            self._reject(turn_id)
            metrics.TURNS.labels(outcome="cancelled").inc()
            await self.cancelled(turn_id)
            return
        running = self.running.get(turn_id)
        if running is not None:
            running.cancel("client")
        # Otherwise the turn already has its final message: a racing cancel is a no-op.

    # -- turn bookkeeping --------------------------------------------------------------------
    async def _run_turn(self, running: RunningTurn) -> None:
        try:
            await run_turn(
                self.service.guard, running, self, timeout_s=self.settings.turn_timeout_s
            )
        finally:
            # Nothing above may skip this: the drain counts on every turn being closed.
            self.running.pop(running.turn_id, None)
            self._release_audio(running.turn_id)
            self.service.turn_closed()
            metrics.TURNS.labels(outcome=running.outcome).inc()

    def _reject(self, turn_id: str) -> None:
        self.rejected[turn_id] = None
        while len(self.rejected) > _REJECTED_MEMORY:
            self.rejected.popitem(last=False)

    async def _fail_turn(self, turn_id: str, kind: str, message: str) -> None:
        """Final error for a turn that is not generating; its late audio is ignored."""
        if self.collecting.pop(turn_id, None) is not None:
            self._release_audio(turn_id)
            self.service.turn_closed()
        self._reject(turn_id)
        metrics.TURNS.labels(outcome="error").inc()
        await self.error(turn_id, kind, message)

    async def _cancel_all(self, reason: CancelReason) -> None:
        tasks = [r.task for r in self.running.values() if r.task is not None]
        for running in list(self.running.values()):
            running.cancel(reason)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- ending ------------------------------------------------------------------------------
    async def _closed_by_peer(self) -> None:
        """The socket is gone: cancel its turns, forget its private session."""
        self._closed = True
        for turn_id in list(self.collecting):
            self._release_audio(turn_id)
            self.service.turn_closed()
        self.collecting.clear()
        await self._cancel_all("disconnect")
        if self._default_session_used:
            self.service.forget_session(self.default_session_id)
        self._unregister()

    async def shutdown(self) -> None:
        """End open turns (shutting_down) and close with 1001 so clients reconnect elsewhere.

        Bounded: every send has its deadline, and a client that does not read past it is
        aborted; the service also bounds the whole call (:meth:`abort`).
        """
        self._shutdown = True
        for turn_id in list(self.collecting):
            await self._fail_turn(
                turn_id, "shutting_down", "the server shut down before turn.end: retry the turn"
            )
        await self._cancel_all("shutdown")
        await self._close(CLOSE_GOING_AWAY, "server shutting down")
