"""The Guard as a LiveKit ``RealtimeModel``: the user's speech in, guarded text out.

Why a realtime model and not an ``llm_node``: the Guard listens to the audio itself
(SARSteer steers an audio-language model), and ``llm_node`` only ever sees text. A
``RealtimeModel`` receives every microphone frame through ``push_audio``, so the
session needs no STT. Output is text only (``audio_output=False``): the
``AgentSession``'s own TTS speaks the replies, and its interruption handling, TTS
choice and transcripts all keep working.

How the session drives it (``livekit/agents/voice/agent_activity.py``):

- every input frame goes to :meth:`RealtimeSession.push_audio`, silence included;
- with the plugin's turn detection (``turn_detection="realtime_llm"`` on the session)
  webrtcvad finds turns; an onset emits ``input_speech_started``
  (the session's barge-in), a finished turn ``input_speech_stopped`` and a
  ``generation_created`` that the session speaks;
- with the session's turn detection (``"manual"``, or ``"vad"`` with a VAD), it calls
  :meth:`RealtimeSession.commit_audio` then :meth:`RealtimeSession.generate_reply`,
  and the committed audio is trimmed to its speech here;
- :meth:`RealtimeSession.interrupt` closes the Guard's event iterator, which cancels
  the turn in the Guard (barge-in).

Each turn's :class:`~sarsteer_guard.guard.events.TurnDecision` is emitted as a
``"sarsteer_decision"`` event on both the session and the model; the Guard writes the
audit record itself. A failed turn emits a recoverable ``"error"`` and the session
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from livekit import rtc
from livekit.agents import llm, utils
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from sarsteer_guard.audio.pcm import FloatArray
from sarsteer_guard.audio.vad import VAD_RATE, SegmenterSettings
from sarsteer_guard.connect import GuardHandle, turn_events
from sarsteer_guard.errors import GuardError
from sarsteer_guard.guard.events import (
    ContextValue,
    GuardEvent,
    SpeechGuard,
    TextDelta,
    Turn,
    TurnContext,
    TurnDecision,
    TurnError,
)

from livekit.plugins.sarsteer.log import logger
from livekit.plugins.sarsteer.realtime.input_audio import CommitBuffer, TurnDetector

#: Turn detection used when none is given: webrtcvad mode 2, 600 ms of silence ends a turn.
DEFAULT_TURN_DETECTION = SegmenterSettings()

SarsteerEvent = Literal["sarsteer_decision"]
ModelEvent = Literal["sarsteer_decision", "error"]


class GuardTurnError(GuardError):
    """A turn the Guard answered with a :class:`TurnError`; carried by ``error`` events."""

    def __init__(self, event: TurnError) -> None:
        super().__init__(f"guard turn {event.turn_id} failed ({event.kind}): {event.message}")
        self.event = event
        self.kind = event.kind


class RealtimeModel(llm.RealtimeModel, rtc.EventEmitter[ModelEvent]):
    """A SARSteer-guarded audio-language model for ``AgentSession(llm=...)``.

    One model holds one Guard (the loaded network), shared by all its sessions. Pass
    a ready ``guard`` (any :class:`~sarsteer_guard.guard.events.SpeechGuard`: an
    in-process ``Guard``, a ``RemoteGuard``, a test double) or let the model build one
    lazily on first use: ``Guard(model=..., policy=..., store=..., audit=...)``, or
    ``RemoteGuard(remote_url)`` when ``remote_url`` is given. A guard passed in stays
    the caller's to close; a guard built here is closed by :meth:`aclose`.

    Events (``model.on(...)``): ``"sarsteer_decision"`` with each turn's
    :class:`~sarsteer_guard.guard.events.TurnDecision` (``refused`` says whether a
    refusal was served), and ``"error"`` with the same ``llm.RealtimeModelError`` the
    session receives.

    Args:
        guard: the guard to use; None builds one from the options below.
        model: hub id or path for the in-process Guard; required unless ``guard`` or
            ``remote_url`` is given (the built-in test model ``"tiny"`` only when named).
        policy: policy YAML path for the in-process Guard; None uses its default.
        store: vector store URL for the in-process Guard.
        audit: audit log URL for the in-process Guard.
        remote_url: a Guard server URL; builds a ``RemoteGuard`` instead.
        engine: generation backend of the in-process Guard (``transformers`` or ``vllm``).
        context: turn context for the policy rules (e.g. ``{"channel": "kids"}``);
            change it later with :meth:`update_options`.
        turn_detection: webrtcvad settings for the plugin's own turn detection and
            for trimming committed audio; None leaves turn taking to the session.
        max_new_tokens: cap on reply length per turn; None uses the Guard's.
        session_id: id the Guard files turns (history, audit) under; None gives each
            realtime session a fresh one. Use the room name to correlate audits.
    """

    def __init__(
        self,
        guard: SpeechGuard | None = None,
        *,
        model: str | None = None,
        policy: str | None = None,
        store: str | None = None,
        audit: str | None = None,
        remote_url: str | None = None,
        engine: str = "transformers",
        context: TurnContext | None = None,
        turn_detection: SegmenterSettings | None = DEFAULT_TURN_DETECTION,
        max_new_tokens: int | None = None,
        session_id: str | None = None,
    ) -> None:
        handle = GuardHandle.from_options(
            guard,
            model=model,
            policy=policy,
            store=store,
            audit=audit,
            remote_url=remote_url,
            engine=engine,
        )
        if max_new_tokens is not None and max_new_tokens < 1:
            raise GuardError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        llm.RealtimeModel.__init__(
            self,
            capabilities=llm.RealtimeCapabilities(
                message_truncation=False,
                turn_detection=turn_detection is not None,
                user_transcription=False,  # no transcript: add stt= to the session for one
                auto_tool_reply_generation=False,
                audio_output=False,  # the session's TTS speaks the replies
                manual_function_calls=False,
                can_disable_turn_detection=True,
                mutable_chat_context=True,
                mutable_instructions=True,
                mutable_tools=True,
            ),
        )
        rtc.EventEmitter.__init__(self)
        self._handle = handle
        self._model_name = "remote" if remote_url is not None else (model or "guard")
        self._context: dict[str, ContextValue] = dict(context or {})
        self._turn_detection = turn_detection
        self._max_new_tokens = max_new_tokens
        self._session_id = session_id
        self._sessions: weakref.WeakSet[RealtimeSession] = weakref.WeakSet()
        self._closed = False

    @property
    def model(self) -> str:
        """The audio-language model's name (``"remote"`` for a Guard server)."""
        return self._model_name

    @property
    def provider(self) -> str:
        """Shown in LiveKit metrics and traces."""
        return "sarsteer"

    @property
    def guard(self) -> SpeechGuard | None:
        """The guard, once given or built (None before the first turn or :meth:`start`)."""
        return self._handle.current

    @property
    def context(self) -> Mapping[str, ContextValue]:
        """The default turn context for the policy rules."""
        return dict(self._context)

    @property
    def turn_detection(self) -> SegmenterSettings | None:
        """The webrtcvad settings, or None when the session decides turns."""
        return self._turn_detection

    def update_options(
        self,
        *,
        context: NotGivenOr[TurnContext | None] = NOT_GIVEN,
        max_new_tokens: NotGivenOr[int | None] = NOT_GIVEN,
    ) -> None:
        """Change the defaults for the next turns of every session without its own."""
        if utils.is_given(context):
            self._context = dict(context or {})
        if utils.is_given(max_new_tokens):
            self._max_new_tokens = max_new_tokens

    def session(self, *, turn_detection_disabled: bool = False) -> RealtimeSession:
        """A new realtime session; the session's turn detection wins when it has one."""
        if self._closed:
            raise GuardError("this RealtimeModel is closed; create a new one")
        sess = RealtimeSession(
            self,
            turn_detection=self._turn_detection is not None and not turn_detection_disabled,
        )
        self._sessions.add(sess)
        return sess

    async def start(self) -> SpeechGuard:
        """Build (if needed) and start the guard; idempotent and safe to call concurrently.

        Sessions call this on the first turn; call it yourself (e.g. before
        ``session.start``) so the first user turn does not wait for the model to load.
        A failed start is retried by the next call; a cancelled caller (barge-in during
        loading) does not abort the load.
        """
        if self._closed:
            raise GuardError("this RealtimeModel is closed; create a new one")
        return await self._handle.start()

    async def aclose(self) -> None:
        """Close every session and, if this model built it, the guard (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for sess in list(self._sessions):
            await sess.aclose()
        await self._handle.close()


@dataclass
class _Generation:
    """One reply in flight: the streams the session reads and the task feeding them."""

    response_id: str
    turn: Turn
    text_ch: utils.aio.Chan[str] = field(default_factory=utils.aio.Chan)
    audio_ch: utils.aio.Chan[rtc.AudioFrame] = field(default_factory=utils.aio.Chan)
    message_ch: utils.aio.Chan[llm.MessageGeneration] = field(default_factory=utils.aio.Chan)
    function_ch: utils.aio.Chan[llm.FunctionCall] = field(default_factory=utils.aio.Chan)
    task: asyncio.Task[None] | None = None
    text: str = ""
    decision: TurnDecision | None = None

    def close(self) -> None:
        """Close every stream: an open one keeps the session's turn from ending."""
        for ch in (self.text_ch, self.audio_ch, self.message_ch, self.function_ch):
            ch.close()


class RealtimeSession(llm.RealtimeSession[SarsteerEvent]):
    """One conversation with the Guard, created by :meth:`RealtimeModel.session`.

    Not for direct construction; the ``AgentSession`` makes one per agent activity.
    Also usable without an ``AgentSession`` (``examples/livekit_offline.py`` plays a
    recording to a real one): ``push_audio`` frames, then ``commit_audio()`` and
    ``await generate_reply()``, or let the plugin's turn detection emit
    ``generation_created``.
    """

    def __init__(self, realtime_model: RealtimeModel, *, turn_detection: bool) -> None:
        super().__init__(realtime_model)
        self._model = realtime_model
        settings = realtime_model.turn_detection or DEFAULT_TURN_DETECTION
        self._detector = TurnDetector(settings) if turn_detection else None
        self._commit_buffer = CommitBuffer(settings)
        self._committed: list[FloatArray] = []
        self._chat_ctx = llm.ChatContext.empty()
        self._tools = llm.ToolContext.empty()
        self._instructions = ""
        self._context: dict[str, ContextValue] | None = None
        self._max_new_tokens: NotGivenOr[int | None] = NOT_GIVEN
        self._session_id = realtime_model._session_id or utils.shortuuid("sarsteer_")
        self._generation: _Generation | None = None
        self._closed = False
        self._warned_text_only = False
        # Load the model now rather than on the user's first turn.
        try:
            self._prewarm: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
                self._prewarm_guard(), name="sarsteer.prewarm"
            )
        except RuntimeError:  # no running loop (constructed from sync code): load lazily
            self._prewarm = None

    # -- the llm.RealtimeSession interface --------------------------------------------

    @property
    def session_id(self) -> str:
        """The id the Guard files this conversation's turns under."""
        return self._session_id

    @property
    def turn_detection(self) -> bool:
        """True when the plugin's webrtcvad decides turns in this session."""
        return self._detector is not None

    @property
    def chat_ctx(self) -> llm.ChatContext:
        """The context last given by the session (the Guard keeps its own history)."""
        return self._chat_ctx.copy()

    @property
    def tools(self) -> llm.ToolContext:
        """Accepted for the interface; the guarded model calls no tools."""
        return self._tools.copy()

    async def update_instructions(self, instructions: str) -> None:
        """Kept, not sent: the Guard's prompt is fixed by its steering calibration."""
        self._instructions = instructions

    async def update_chat_ctx(self, chat_ctx: llm.ChatContext) -> None:
        """Kept for ``chat_ctx``; the Guard keeps the spoken history itself."""
        self._chat_ctx = chat_ctx.copy()

    async def update_tools(self, tools: list[llm.Tool]) -> None:
        """Kept for ``tools``; the guarded model calls no tools."""
        self._tools = llm.ToolContext(tools)

    def update_options(
        self,
        *,
        tool_choice: NotGivenOr[llm.ToolChoice | None] = NOT_GIVEN,
        context: NotGivenOr[TurnContext | None] = NOT_GIVEN,
        max_new_tokens: NotGivenOr[int | None] = NOT_GIVEN,
    ) -> None:
        """Set this session's turn context (None: back to the model's) for next turns.

        ``tool_choice`` is accepted for the interface and ignored.
        """
        if utils.is_given(context):
            self._context = None if context is None else dict(context)
        if utils.is_given(max_new_tokens):
            self._max_new_tokens = max_new_tokens

    def push_audio(self, frame: rtc.AudioFrame) -> None:
        """Take a microphone frame (any rate, mono or stereo, silence included)."""
        if self._closed or frame.samples_per_channel == 0:
            return
        if self._detector is None:
            self._commit_buffer.push(frame)
            return
        update = self._detector.push(frame)
        for audio in update.turns:
            self.emit(
                "input_speech_stopped",
                llm.InputSpeechStoppedEvent(user_transcription_enabled=False),
            )
            self._reply(audio, user_initiated=False)
        if update.speech_started:
            self.emit("input_speech_started", llm.InputSpeechStartedEvent())

    def push_video(self, frame: rtc.VideoFrame) -> None:
        """Ignored: the guarded model hears, it does not see."""

    def commit_audio(self) -> None:
        """End the user's turn: keep its speech (trimmed) for the next reply."""
        if self._detector is not None:
            self._committed.extend(self._detector.flush())
            return
        audio = self._commit_buffer.commit()
        if audio is not None:
            self._committed.append(audio)

    def clear_audio(self) -> None:
        """Forget uncommitted and committed audio."""
        self._commit_buffer.clear()
        if self._detector is not None:
            self._detector.clear()
        self._committed = []

    def generate_reply(
        self,
        *,
        instructions: NotGivenOr[str] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        tools: NotGivenOr[list[llm.Tool]] = NOT_GIVEN,
    ) -> asyncio.Future[llm.GenerationCreatedEvent]:
        """Answer the committed speech; the future resolves as soon as streaming starts.

        The Guard answers speech only: with nothing committed (a text-only
        ``generate_reply(instructions=...)``, e.g. a greeting) the reply is empty, so
        use ``session.say(...)`` for scripted lines. ``instructions`` and tools are
        ignored for the same reason.
        """
        fut: asyncio.Future[llm.GenerationCreatedEvent] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_exception(llm.RealtimeError("the sarsteer session is closed"))
            return fut
        audio = self._take_committed()
        if audio is None and not self._warned_text_only:
            self._warned_text_only = True
            logger.warning(
                "generate_reply without committed speech gives an empty reply: the guard "
                "answers speech only; use session.say() for scripted lines"
            )
        fut.set_result(self._reply(audio, user_initiated=True))
        return fut

    def interrupt(self) -> None:
        """Stop the reply in flight; the Guard's turn is cancelled (barge-in)."""
        gen, self._generation = self._generation, None
        if gen is None:
            return
        if gen.task is not None and not gen.task.done():
            gen.task.cancel()
        gen.close()

    def truncate(
        self,
        *,
        message_id: str,
        modalities: list[Literal["text", "audio"]],
        audio_end_ms: int,
        audio_transcript: NotGivenOr[str] = NOT_GIVEN,
    ) -> None:
        """Not used (``message_truncation=False``); the Guard keeps its own history."""

    async def aclose(self) -> None:
        """Cancel the reply in flight and stop taking audio (idempotent)."""
        if self._closed:
            return
        self._closed = True
        gen = self._generation
        self.interrupt()
        if gen is not None and gen.task is not None:
            with contextlib.suppress(BaseException):
                await gen.task
        if self._prewarm is not None and not self._prewarm.done():
            self._prewarm.cancel()
        self._commit_buffer.clear()
        self._committed = []

    # -- internals --------------------------------------------------------------------

    def _take_committed(self) -> FloatArray | None:
        parts, self._committed = self._committed, []
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _turn_context(self) -> dict[str, ContextValue]:
        return dict(self._context if self._context is not None else self._model._context)

    def _reply(
        self, audio: FloatArray | None, *, user_initiated: bool
    ) -> llm.GenerationCreatedEvent:
        """Start a generation for ``audio`` (None: an empty reply) and announce it."""
        self.interrupt()  # a new user turn supersedes an unfinished reply
        max_new_tokens = (
            self._max_new_tokens
            if utils.is_given(self._max_new_tokens)
            else self._model._max_new_tokens
        )
        turn = Turn(
            audio=audio if audio is not None else np.zeros(0, dtype=np.float32),
            sample_rate=VAD_RATE,
            session_id=self._session_id,
            context=self._turn_context(),
            max_new_tokens=max_new_tokens,
        )
        gen = _Generation(response_id=utils.shortuuid("sarsteer_resp_"), turn=turn)
        modalities: asyncio.Future[list[Literal["text", "audio"]]] = (
            asyncio.get_running_loop().create_future()
        )
        modalities.set_result(["text"])
        gen.message_ch.send_nowait(
            llm.MessageGeneration(
                message_id=turn.turn_id,
                text_stream=gen.text_ch,
                audio_stream=gen.audio_ch,
                modalities=modalities,
            )
        )
        gen.audio_ch.close()  # text only; the session's TTS speaks
        gen.function_ch.close()  # no tools
        if audio is None:
            gen.close()
        else:
            self._generation = gen
            gen.task = asyncio.get_running_loop().create_task(
                self._run(gen), name="sarsteer.generation"
            )
        event = llm.GenerationCreatedEvent(
            message_stream=gen.message_ch,
            function_stream=gen.function_ch,
            user_initiated=user_initiated,
            response_id=gen.response_id,
        )
        self.emit("generation_created", event)
        return event

    async def _run(self, gen: _Generation) -> None:
        """Stream the Guard's events into the generation; always close its streams."""
        try:
            try:
                guard = await self._model.start()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # No model, no answers: let the session close rather than sit mute.
                self._emit_error(error, recoverable=False)
                return
            await self._stream(guard, gen)
        finally:
            gen.close()
            if self._generation is gen:
                self._generation = None

    async def _stream(self, guard: SpeechGuard, gen: _Generation) -> None:
        """Feed the guard's events into ``gen``; leaving early (interrupt) cancels the turn."""
        try:
            async with turn_events(guard, gen.turn) as events:
                async for event in events:
                    self._on_event(gen, event)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._emit_error(error, recoverable=True)

    def _on_event(self, gen: _Generation, event: GuardEvent) -> None:
        if isinstance(event, TextDelta):
            if event.text and not gen.text_ch.closed:
                gen.text += event.text
                gen.text_ch.send_nowait(event.text)
        elif isinstance(event, TurnDecision):
            gen.decision = event
            logger.debug(
                "sarsteer turn decided",
                extra={"turn_id": event.turn_id, "refused": event.refused},
            )
            self.emit("sarsteer_decision", event)
            self._model.emit("sarsteer_decision", event)
        elif isinstance(event, TurnError):
            self._emit_error(GuardTurnError(event), recoverable=True)

    async def _prewarm_guard(self) -> None:
        try:
            await self._model.start()
        except Exception as error:  # reported again, with the session, on the first turn
            logger.warning("sarsteer guard failed to start: %s", error)

    def _emit_error(self, error: Exception, *, recoverable: bool) -> None:
        event = llm.RealtimeModelError(
            timestamp=time.time(),
            label=self._model.label,
            error=error,
            recoverable=recoverable,
        )
        logger.warning("sarsteer turn failed: %s", error, extra={"recoverable": recoverable})
        self.emit("error", event)
        self._model.emit("error", event)
