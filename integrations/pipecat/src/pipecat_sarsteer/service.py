"""SARSteerGuardService: a guarded audio-language model as one Pipecat service.

It replaces the ``stt, llm`` pair of a cascaded bot: the user's speech goes to the
Guard as audio (no transcript in between, so the steering sees what the model hears)
and the response comes back as the frames an LLM service pushes, ready for any TTS.

Shape follows Pipecat's realtime services (OpenAI Realtime, Gemini Live): an
``AIService`` that announces itself with ``LLMServiceMetadataFrame(is_realtime_service=
True)`` so the user aggregator does not wait for a transcript, takes turn boundaries
from the pipeline's ``UserStarted/StoppedSpeakingFrame`` (with a pre-roll, since those
arrive after speech has begun) or from its own webrtcvad segmentation, and runs each
turn as a task so interruptions are handled while a response streams. Where turns
begin and end is decided by :class:`~pipecat_sarsteer.turns.TurnTaking`, a state
machine with no Pipecat in it; this module only translates frames in and actions out.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMServiceMetadataFrame,
    LLMTextFrame,
    SpeechControlParamsFrame,
    StartFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings
from pipecat.utils.errors import ErrorCategory
from pydantic import BaseModel, Field, model_validator
from sarsteer_guard.audio.vad import SegmenterSettings
from sarsteer_guard.connect import GuardHandle, turn_events
from sarsteer_guard.guard.events import (
    ContextValue,
    GuardEvent,
    SpeechGuard,
    TextDelta,
    Turn,
    TurnDecision,
    TurnError,
)

from pipecat_sarsteer.frames import SARSteerContextUpdateFrame, SARSteerDecisionFrame
from pipecat_sarsteer.turns import (
    DEFAULT_SEGMENTER,
    Action,
    Interrupt,
    SpeechStarted,
    SpeechStopped,
    TurnMode,
    TurnSettings,
    TurnTaking,
    UserTurn,
)

# TurnError kinds whose Pipecat category is known; the rest are UNKNOWN. Never a
# permanent category: one bad turn must not mark the service unusable.
_ERROR_CATEGORIES = {
    "overloaded": ErrorCategory.RATE_LIMIT,
    "connectivity": ErrorCategory.CONNECTIVITY,
    "unavailable": ErrorCategory.CONNECTIVITY,
    "model": ErrorCategory.SERVER,
    "vectors": ErrorCategory.SERVER,
}
#: Older loose keywords of the own segmenter, still accepted: keyword -> SegmenterSettings field.
_LEGACY_SEGMENTER_KEYWORDS = {
    "vad_aggressiveness": "aggressiveness",
    "vad_end_silence_ms": "end_silence_ms",
    "vad_min_speech_ms": "min_speech_ms",
}


class SARSteerParams(BaseModel):
    """Tuning of the guard node; the defaults suit a conversational bot.

    Parameters:
        turn_detection: Where turn boundaries come from. ``"pipeline"``: the
            pipeline's ``UserStarted/StoppedSpeakingFrame`` (VAD in the user
            aggregator or transport). ``"own"``: the node's webrtcvad segmenter, for
            pipelines without VAD (pipeline speaking frames are then ignored).
            ``"auto"``: own segmentation until the pipeline shows it has VAD (a
            ``SpeechControlParamsFrame`` or a speaking frame).
        pre_roll_secs: Audio kept from before the pipeline's turn start. None sizes it
            from the pipeline VAD's ``start_secs`` plus 0.3 s (0.5 s if unknown).
        min_turn_secs: Shorter pipeline turns are ignored (clicks, false starts).
        max_turn_secs: Only the last this-many seconds of a pipeline turn are sent.
        segmenter: webrtcvad settings of own segmentation (aggressiveness, frame
            length, silence that ends a turn, minimum speech, longest turn, pre-roll).
            The older keywords ``vad_aggressiveness``, ``vad_end_silence_ms`` and
            ``vad_min_speech_ms`` still work; without ``segmenter`` its longest turn
            follows ``max_turn_secs``.
        allow_interruptions: In own segmentation, user speech cancels the response
            and broadcasts an ``InterruptionFrame`` (in pipeline mode the pipeline's
            own ``InterruptionFrame`` decides).
        barge_in_ms: Speech needed before own segmentation interrupts the bot.
        emit_user_speaking_frames: In own segmentation, push
            ``UserStarted/StoppedSpeakingFrame`` downstream like a VAD would.
        max_new_tokens: Per-turn cap passed to the Guard (None: the Guard's default).
        push_decision_frames: Push a ``SARSteerDecisionFrame`` for every turn.
        end_timeout_secs: How long an ``EndFrame`` waits for a response in flight.
    """

    turn_detection: TurnMode = "auto"
    pre_roll_secs: float | None = Field(default=None, ge=0.0, le=5.0)
    min_turn_secs: float = Field(default=0.2, ge=0.0)
    max_turn_secs: float = Field(default=30.0, gt=0.0)
    segmenter: SegmenterSettings = DEFAULT_SEGMENTER
    allow_interruptions: bool = True
    barge_in_ms: int = Field(default=200, ge=0)
    emit_user_speaking_frames: bool = True
    max_new_tokens: int | None = Field(default=None, gt=0)
    push_decision_frames: bool = True
    end_timeout_secs: float = Field(default=30.0, gt=0.0)

    @model_validator(mode="before")
    @classmethod
    def _segmenter_from_keywords(cls, data: Any) -> Any:
        """Build ``segmenter`` from the older loose keywords when it is not given."""
        if not isinstance(data, Mapping):
            return data
        values = dict(data)
        legacy = {
            field: values.pop(keyword)
            for keyword, field in _LEGACY_SEGMENTER_KEYWORDS.items()
            if keyword in values
        }
        if "segmenter" in values:
            if legacy:
                raise ValueError(
                    "pass segmenter=SegmenterSettings(...) or the vad_* keywords, not both"
                )
            return values
        fields: dict[str, Any] = {"frame_ms": DEFAULT_SEGMENTER.frame_ms, **legacy}
        if "max_turn_secs" in values:
            fields["max_turn_s"] = values["max_turn_secs"]
        values["segmenter"] = SegmenterSettings(**fields)
        return values

    def turn_settings(self) -> TurnSettings:
        """The turn state machine's settings."""
        return TurnSettings(
            mode=self.turn_detection,
            pre_roll_secs=self.pre_roll_secs,
            min_turn_secs=self.min_turn_secs,
            max_turn_secs=self.max_turn_secs,
            barge_in_ms=self.barge_in_ms,
            allow_interruptions=self.allow_interruptions,
            emit_user_speaking_frames=self.emit_user_speaking_frames,
            segmenter=self.segmenter,
        )


class SARSteerGuardService(AIService):
    """Speech in, guarded text out: the SARSteer Guard as a Pipecat service.

    Frames in: ``InputAudioRawFrame`` (buffered per turn), turn frames
    (``UserStarted/StoppedSpeakingFrame``, the ``VAD`` variants),
    ``InterruptionFrame`` (cancels the response: barge-in), ``SpeechControlParamsFrame``
    (sizes the pre-roll), :class:`SARSteerContextUpdateFrame` (consumed). Everything
    else, and every frame above except the context update, is pushed on.

    Frames out, per turn: ``LLMFullResponseStartFrame``, ``LLMTextFrame`` per streamed
    delta, :class:`SARSteerDecisionFrame`, ``LLMFullResponseEndFrame``; a failed turn
    pushes a non-fatal ``ErrorFrame`` upstream and the next turn goes on.

    Event handlers:

    - ``on_decision(service, decision: TurnDecision)``: every finished turn.
    - ``on_turn_error(service, error: TurnError)``: every failed turn.

    A guard passed in is started (idempotent) but never closed: it may be shared by
    many calls. A guard the service builds itself is closed with the pipeline.
    """

    InputParams = SARSteerParams

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
        context: Mapping[str, ContextValue] | None = None,
        session_id: str | None = None,
        params: SARSteerParams | None = None,
        **kwargs: Any,
    ) -> None:
        """Configure the service; no I/O happens until the pipeline sets it up.

        Args:
            guard: A started or unstarted Guard/RemoteGuard to use (never closed here).
            model: Hub id or path for the Guard built when ``guard`` and ``remote_url``
                are None (required then; the test model ``"tiny"`` only when named).
            policy: Policy YAML path for the built Guard.
            store: Vector store URL for the built Guard.
            audit: Audit log URL for the built Guard.
            remote_url: Build a ``RemoteGuard`` for this server instead.
            engine: Generation backend of the built Guard (``transformers`` or ``vllm``).
            context: Policy context for every turn (e.g. ``{"tier": "minor"}``).
            session_id: Conversation id for the Guard's history and audit; a fresh
                one per service instance by default, as one pipeline is one call.
            params: Tuning, see :class:`SARSteerParams`.
            **kwargs: Passed to ``AIService`` (e.g. ``name``).
        """
        handle = GuardHandle.from_options(
            guard,
            model=model,
            policy=policy,
            store=store,
            audit=audit,
            remote_url=remote_url,
            engine=engine,
        )
        name = "remote" if remote_url is not None else (model or "guard")
        super().__init__(settings=ServiceSettings(model=name), **kwargs)
        self._handle = handle
        self._params = params or SARSteerParams()
        self._context: dict[str, ContextValue] = dict(context or {})
        self._session_id = session_id or uuid.uuid4().hex
        self._start_task: asyncio.Task[None] | None = None
        self._running = False  # StartFrame processed: errors can travel
        self._turns = TurnTaking(self._params.turn_settings())
        self._response_tasks: list[asyncio.Task[None]] = []
        self._register_event_handler("on_decision")
        self._register_event_handler("on_turn_error")

    # -- public API --------------------------------------------------------------

    @property
    def guard(self) -> SpeechGuard:
        """The Guard this service uses, built on first access when none was passed."""
        return self._handle.guard

    @property
    def session_id(self) -> str:
        """The session id sent with every turn."""
        return self._session_id

    @property
    def context(self) -> Mapping[str, ContextValue]:
        """A copy of the policy context the next turn will carry."""
        return dict(self._context)

    def update_context(
        self,
        context: Mapping[str, ContextValue] | None = None,
        *,
        replace: bool = False,
        session_id: str | None = None,
    ) -> None:
        """Change the context (merge, or ``replace``) and/or session id for later turns.

        Same effect as pushing a :class:`SARSteerContextUpdateFrame`; turns already
        sent keep the context they were sent with.
        """
        if replace:
            self._context = dict(context or {})
        else:
            self._context.update(context or {})
        if session_id is not None:
            self._session_id = session_id

    def can_generate_metrics(self) -> bool:
        """TTFB, processing time and token usage are reported per turn."""
        return True

    def service_metadata_frame(self) -> LLMServiceMetadataFrame:
        """Announce a realtime service so the user aggregator expects no transcript."""
        return LLMServiceMetadataFrame(service_name=self.name, is_realtime_service=True)

    # -- lifecycle ---------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]  # FrameProcessor narrows BaseObject.setup's argument the same way
        """Start loading the Guard in the background.

        Not awaited here: Pipecat gives the whole pipeline's setup 20 s, which a large
        model's load can exceed. The first turn waits for the load instead. To load
        before any call arrives, start a shared Guard yourself and pass ``guard=``.
        """
        await super().setup(setup)
        self._turns.sample_rate = setup.audio_in_sample_rate
        if self._start_task is None:
            self._start_task = self.create_task(self._start_guard(), name="sarsteer-guard-start")

    async def start(self, frame: StartFrame) -> None:
        """Report a Guard that already failed to start, now that errors can travel."""
        await super().start(frame)
        self._running = True
        error = self._handle.start_error
        if error is not None:
            await self._push_start_error(error)

    async def stop(self, frame: EndFrame) -> None:
        """Graceful end: answer a trailing turn, let responses finish, then close."""
        await super().stop(frame)
        await self._perform(self._turns.flush())
        pending = [t for t in self._response_tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=self._params.end_timeout_secs)
        await self._shutdown()

    async def cancel(self, frame: CancelFrame) -> None:
        """Immediate end: drop responses in flight and close."""
        await super().cancel(frame)
        await self._shutdown()

    async def cleanup(self) -> None:
        """Release everything even if neither End nor Cancel arrived."""
        await super().cleanup()  # type: ignore[no-untyped-call]  # pipecat leaves it unannotated
        await self._shutdown()

    async def _start_guard(self) -> None:
        try:
            await self._handle.start()
        except Exception as e:
            logger.error(f"{self}: SARSteer guard failed to start: {e}")
            if self._running:
                await self._push_start_error(e)

    async def _push_start_error(self, error: BaseException) -> None:
        await self.push_error(
            f"SARSteer guard failed to start: {error}",
            exception=error if isinstance(error, Exception) else None,
            force_treat_as_permanent=True,
        )

    async def _shutdown(self) -> None:
        self._running = False
        await self._cancel_responses()
        if self._start_task is not None and not self._start_task.done():
            await self.cancel_task(self._start_task)
        self._start_task = None
        try:
            await self._handle.close()  # closes the guard only if this service built it
        except Exception as e:
            logger.warning(f"{self}: closing the SARSteer guard failed: {e}")

    # -- frames ------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Take turns, start responses as tasks, and push every other frame on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, SARSteerContextUpdateFrame):
            self.update_context(frame.context, replace=frame.replace, session_id=frame.session_id)
            return  # addressed to this service only
        await self._perform(self._turn_actions(frame))
        if isinstance(frame, InterruptionFrame):
            await self._cancel_responses()
        await self.push_frame(frame, direction)

    def _turn_actions(self, frame: Frame) -> list[Action]:
        """Feed a frame to the turn state machine."""
        turns = self._turns
        match frame:
            case InputAudioRawFrame():
                return turns.audio(bytes(frame.audio), frame.sample_rate, frame.num_channels)
            case SpeechControlParamsFrame(vad_params=vad) if vad is not None:
                return turns.vad_params(vad.start_secs)
            case UserStartedSpeakingFrame():
                return turns.user_started()
            case VADUserStartedSpeakingFrame():
                return turns.vad_started()
            case UserStoppedSpeakingFrame():
                return turns.user_stopped()
            case VADUserStoppedSpeakingFrame():
                return turns.vad_stopped()
        return []

    async def _perform(self, actions: list[Action]) -> None:
        """Do what the turn state machine decided, in order."""
        for action in actions:
            match action:
                case SpeechStarted():
                    await self.push_frame(UserStartedSpeakingFrame())
                case SpeechStopped():
                    await self.push_frame(UserStoppedSpeakingFrame())
                case Interrupt():
                    # The bot may still be speaking an earlier answer: stop TTS and output too.
                    await self._cancel_responses()
                    await self.broadcast_interruption()  # type: ignore[no-untyped-call]  # unannotated upstream
                case UserTurn():
                    self._dispatch(self._make_turn(action))

    # -- responses -----------------------------------------------------------------

    def _make_turn(self, user_turn: UserTurn) -> Turn:
        return Turn(
            audio=user_turn.audio,
            sample_rate=user_turn.sample_rate,
            channels=user_turn.channels,
            sample_format=user_turn.sample_format,
            session_id=self._session_id,
            context=dict(self._context),
            max_new_tokens=self._params.max_new_tokens,
        )

    def _dispatch(self, turn: Turn) -> None:
        """Run the turn as a task, after any response still streaming."""
        previous = [t for t in self._response_tasks if not t.done()]
        task = self.create_task(self._respond(turn, previous), name=f"sarsteer-{turn.turn_id}")
        self._response_tasks = [*previous, task]

    async def _cancel_responses(self) -> None:
        tasks, self._response_tasks = self._response_tasks, []
        for task in tasks:
            if not task.done():
                await self.cancel_task(task)

    async def _respond(self, turn: Turn, previous: list[asyncio.Task[None]]) -> None:
        """Run one turn; a cancelled turn (barge-in, pipeline end) is logged with its id.

        A cancelled turn gets no decision (the guard cancels its generation), so this log
        line is the only trace of it in the pipeline's logs.
        """
        try:
            await self._run_turn(turn, previous)
        except asyncio.CancelledError:
            logger.info(
                f"{self}: SARSteer turn {turn.turn_id} cancelled (barge-in or pipeline end)"
            )
            raise

    async def _run_turn(self, turn: Turn, previous: list[asyncio.Task[None]]) -> None:
        if previous:
            # asyncio.wait, not await: cancelling this task must not cancel those.
            await asyncio.wait(previous)
        try:
            guard = await self._handle.start()  # shielded: a cancelled turn keeps the load
        except Exception as e:
            await self._report_error(
                TurnError(turn.turn_id, "unavailable", f"guard not started: {e}")
            )
            return
        response = _ResponseFrames(self)
        await self.start_ttfb_metrics()
        await self.start_processing_metrics()
        try:
            async with turn_events(guard, turn) as events:
                async for event in events:
                    await self._on_event(response, event)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a broken guard must not take the pipeline down
            await self.push_error(
                f"SARSteer turn {turn.turn_id} failed: {e}",
                exception=e,
                category=ErrorCategory.UNKNOWN,
            )
        finally:
            await self.stop_processing_metrics()
            await response.close()

    async def _on_event(self, response: _ResponseFrames, event: GuardEvent) -> None:
        if isinstance(event, TextDelta):
            await response.text(event.text)
        elif isinstance(event, TurnDecision):
            if not response.streamed:
                # A guard that serves the whole answer at the end (no deltas).
                await response.text(event.text)
            await self._report_decision(event)
        elif isinstance(event, TurnError):
            await self._report_error(event)

    async def _report_decision(self, decision: TurnDecision) -> None:
        if decision.tokens:
            await self.start_llm_usage_metrics(
                LLMTokenUsage(
                    prompt_tokens=0,
                    completion_tokens=decision.tokens,
                    total_tokens=decision.tokens,
                )
            )
        if self._params.push_decision_frames:
            await self.push_frame(SARSteerDecisionFrame(decision=decision))
        await self._call_event_handler("on_decision", decision)

    async def _report_error(self, error: TurnError) -> None:
        await self.push_error(
            f"SARSteer turn {error.turn_id} failed ({error.kind}): {error.message}",
            category=_ERROR_CATEGORIES.get(error.kind, ErrorCategory.UNKNOWN),
        )
        await self._call_event_handler("on_turn_error", error)


class _ResponseFrames:
    """One turn's response frames: Start before the first text, End only if Start went out."""

    def __init__(self, service: SARSteerGuardService) -> None:
        self._service = service
        self.opened = False
        self.streamed = False

    async def text(self, text: str) -> None:
        """Push a text frame (empty text pushes nothing), opening the response first."""
        if not text:
            return
        if not self.opened:
            self.opened = True
            await self._service.stop_ttfb_metrics()
            await self._service.push_frame(LLMFullResponseStartFrame())
        self.streamed = True
        await self._service.push_frame(LLMTextFrame(text))

    async def close(self) -> None:
        """Close the response, so downstream state (aggregators, TTS) resets."""
        if self.opened:
            await self._service.push_frame(LLMFullResponseEndFrame())
