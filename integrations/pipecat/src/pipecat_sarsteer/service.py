"""SARSteerGuardService: a guarded audio-language model as one Pipecat service.

It replaces the ``stt, llm`` pair of a cascaded bot: the user's speech goes to the
Guard as audio (no transcript in between, so the steering sees what the model hears)
and the response comes back as the frames an LLM service pushes, ready for any TTS.

Shape follows Pipecat's realtime services (OpenAI Realtime, Gemini Live): an
``AIService`` that announces itself with ``LLMServiceMetadataFrame(is_realtime_service=
True)`` so the user aggregator does not wait for a transcript, takes turn boundaries
from the pipeline's ``UserStarted/StoppedSpeakingFrame`` (with a pre-roll, since those
arrive after speech has begun), and runs each turn as a task so interruptions are
handled while a response streams.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

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
from pydantic import BaseModel, Field
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

if TYPE_CHECKING:
    from sarsteer_guard.audio.vad import SpeechTurn, TurnSegmenter

#: Pre-roll added to the pipeline VAD's ``start_secs`` (the speech it consumed before
#: announcing the turn), as Pipecat's OpenAI Realtime service does.
PRE_ROLL_MARGIN_SECS = 0.3
#: Pre-roll when the pipeline does not say what its VAD's ``start_secs`` is.
DEFAULT_PRE_ROLL_SECS = 0.5

# TurnError kinds whose Pipecat category is known; the rest are UNKNOWN. Never a
# permanent category: one bad turn must not mark the service unusable.
_ERROR_CATEGORIES = {
    "overloaded": ErrorCategory.RATE_LIMIT,
    "connectivity": ErrorCategory.CONNECTIVITY,
    "unavailable": ErrorCategory.CONNECTIVITY,
    "model": ErrorCategory.SERVER,
    "vectors": ErrorCategory.SERVER,
}


class SARSteerParams(BaseModel):
    """Tuning of the guard node; the defaults suit a conversational bot.

    Parameters:
        turn_detection: Where turn boundaries come from. ``"pipeline"``: the
            pipeline's ``UserStarted/StoppedSpeakingFrame`` (VAD in the user
            aggregator or transport). ``"own"``: the node's webrtcvad segmenter, for
            pipelines without VAD. ``"auto"``: own segmentation until the pipeline
            shows it has VAD (a ``SpeechControlParamsFrame`` or a speaking frame).
        pre_roll_secs: Audio kept from before the pipeline's turn start. None sizes it
            from the pipeline VAD's ``start_secs`` plus 0.3 s (0.5 s if unknown).
        min_turn_secs: Shorter pipeline turns are ignored (clicks, false starts).
        max_turn_secs: Only the last this-many seconds of a turn are sent.
        vad_aggressiveness: webrtcvad mode 0-3 for own segmentation.
        vad_end_silence_ms: Silence that ends a turn in own segmentation.
        vad_min_speech_ms: Own-segmentation turns with less speech are dropped.
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

    turn_detection: Literal["auto", "pipeline", "own"] = "auto"
    pre_roll_secs: float | None = Field(default=None, ge=0.0, le=5.0)
    min_turn_secs: float = Field(default=0.2, ge=0.0)
    max_turn_secs: float = Field(default=30.0, gt=0.0)
    vad_aggressiveness: int = Field(default=2, ge=0, le=3)
    vad_end_silence_ms: int = Field(default=600, ge=30)
    vad_min_speech_ms: int = Field(default=250, ge=0)
    allow_interruptions: bool = True
    barge_in_ms: int = Field(default=200, ge=0)
    emit_user_speaking_frames: bool = True
    max_new_tokens: int | None = Field(default=None, gt=0)
    push_decision_frames: bool = True
    end_timeout_secs: float = Field(default=30.0, gt=0.0)


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
        model: str = "tiny",
        policy: str | None = None,
        store: str | None = None,
        audit: str | None = None,
        remote_url: str | None = None,
        context: Mapping[str, ContextValue] | None = None,
        session_id: str | None = None,
        params: SARSteerParams | None = None,
        **kwargs: Any,
    ) -> None:
        """Configure the service; no I/O happens until the pipeline sets it up.

        Args:
            guard: A started or unstarted Guard/RemoteGuard to use (never closed here).
            model: Model for the Guard built when ``guard`` is None.
            policy: Policy YAML path for the built Guard.
            store: Vector store URL for the built Guard.
            audit: Audit log URL for the built Guard.
            remote_url: Build a ``RemoteGuard`` for this server instead.
            context: Policy context for every turn (e.g. ``{"tier": "minor"}``).
            session_id: Conversation id for the Guard's history and audit; a fresh
                one per service instance by default, as one pipeline is one call.
            params: Tuning, see :class:`SARSteerParams`.
            **kwargs: Passed to ``AIService`` (e.g. ``name``).
        """
        if guard is not None and remote_url is not None:
            raise ValueError("pass either guard= or remote_url=, not both")
        super().__init__(settings=ServiceSettings(model=model), **kwargs)
        self._guard: SpeechGuard | None = guard
        self._owns_guard = guard is None
        self._guard_config = {"model": model, "policy": policy, "store": store, "audit": audit}
        self._remote_url = remote_url
        self._params = params or SARSteerParams()
        self._context: dict[str, ContextValue] = dict(context or {})
        self._session_id = session_id or uuid.uuid4().hex
        self._start_error: Exception | None = None
        self._guard_started = False
        self._start_task: asyncio.Task[None] | None = None
        self._running = False  # StartFrame processed: errors can travel

        # Turn collection.
        self._pipeline_turns = self._params.turn_detection == "pipeline"
        self._saw_user_turn_frames = False  # UserStarted/Stopped seen: VAD ones are hints
        self._pre_roll_secs = self._params.pre_roll_secs
        self._pre_roll: deque[bytes] = deque()
        self._pre_roll_bytes = 0
        self._turn_audio: bytearray | None = None
        self._turn_confirmed = False  # a UserStartedSpeakingFrame opened or joined it
        self._audio_format: tuple[int, int] | None = None  # (sample_rate, channels)
        self._in_sample_rate = 16000
        self._segmenter: TurnSegmenter | None = None
        self._own_speech_since: float | None = None  # stream time own speech began
        self._own_speech_announced = False
        self._own_start_pushed = False
        self._saw_own_turn = False

        # Responses.
        self._response_tasks: list[asyncio.Task[None]] = []

        self._register_event_handler("on_decision")
        self._register_event_handler("on_turn_error")

    # -- public API --------------------------------------------------------------

    @property
    def guard(self) -> SpeechGuard:
        """The Guard this service uses, built on first access when none was passed."""
        if self._guard is None:
            self._guard = self._build_guard()
        return self._guard

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
        self._in_sample_rate = setup.audio_in_sample_rate
        if self._start_task is None and not self._guard_started:
            self._start_task = self.create_task(self._start_guard(), name="sarsteer-guard-start")

    async def start(self, frame: StartFrame) -> None:
        """Report a Guard that already failed to start, now that errors can travel."""
        await super().start(frame)
        self._running = True
        if self._start_error is not None:
            await self._push_start_error()

    async def stop(self, frame: EndFrame) -> None:
        """Graceful end: answer a trailing turn, let responses finish, then close."""
        await super().stop(frame)
        if self._segmenter is not None and not self._pipeline_turns:
            for turn in self._segmenter.flush():
                await self._on_own_turn(turn)
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

    # -- frames ------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Collect turns, start responses as tasks, and push every other frame on."""
        await super().process_frame(frame, direction)

        if isinstance(frame, InputAudioRawFrame):
            await self._handle_audio(frame)
        elif isinstance(frame, SARSteerContextUpdateFrame):
            self.update_context(frame.context, replace=frame.replace, session_id=frame.session_id)
            return  # addressed to this service only
        elif isinstance(frame, SpeechControlParamsFrame):
            self._handle_speech_control(frame)
        elif isinstance(frame, UserStartedSpeakingFrame | VADUserStartedSpeakingFrame):
            self._use_pipeline_turns()
            self._begin_turn()
            if isinstance(frame, UserStartedSpeakingFrame):
                self._saw_user_turn_frames = True
                self._turn_confirmed = True
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._saw_user_turn_frames = True
            self._use_pipeline_turns()
            self._end_pipeline_turn()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            # The user aggregator's turn may outlast a VAD pause; only a pipeline
            # that never sends UserStoppedSpeakingFrame ends turns on VAD.
            self._use_pipeline_turns()
            if not self._saw_user_turn_frames:
                self._end_pipeline_turn()
            elif not self._turn_confirmed:
                self._turn_audio = None  # speech the turn strategies did not take
        elif isinstance(frame, InterruptionFrame):
            await self._cancel_responses()

        await self.push_frame(frame, direction)

    # -- turn collection -----------------------------------------------------------

    def _handle_speech_control(self, frame: SpeechControlParamsFrame) -> None:
        if frame.vad_params is None:
            return
        self._use_pipeline_turns()
        if self._params.pre_roll_secs is None:
            self._pre_roll_secs = frame.vad_params.start_secs + PRE_ROLL_MARGIN_SECS

    def _use_pipeline_turns(self) -> None:
        """In auto mode, the first sign of pipeline VAD retires own segmentation."""
        if self._pipeline_turns or self._params.turn_detection == "own":
            return
        self._pipeline_turns = True
        self._segmenter = None

    async def _handle_audio(self, frame: InputAudioRawFrame) -> None:
        fmt = (frame.sample_rate, frame.num_channels)
        if fmt != self._audio_format:
            # A format change mid-turn cannot be stitched: start collecting afresh.
            self._audio_format = fmt
            self._pre_roll.clear()
            self._pre_roll_bytes = 0
            if self._turn_audio is not None:
                self._turn_audio = bytearray()
        audio = bytes(frame.audio)
        if self._turn_audio is not None:
            self._turn_audio.extend(audio)
            limit = self._bytes_for(self._params.max_turn_secs)
            if len(self._turn_audio) > limit:
                del self._turn_audio[: len(self._turn_audio) - limit]
        self._remember_pre_roll(audio)
        if not self._pipeline_turns:
            await self._segment(frame)

    def _bytes_for(self, seconds: float) -> int:
        rate, channels = self._audio_format or (self._in_sample_rate, 1)
        return int(seconds * rate) * channels * 2

    def _remember_pre_roll(self, audio: bytes) -> None:
        self._pre_roll.append(audio)
        self._pre_roll_bytes += len(audio)
        budget = self._bytes_for(
            DEFAULT_PRE_ROLL_SECS if self._pre_roll_secs is None else self._pre_roll_secs
        )
        while self._pre_roll and self._pre_roll_bytes - len(self._pre_roll[0]) >= budget:
            self._pre_roll_bytes -= len(self._pre_roll.popleft())

    def _begin_turn(self) -> None:
        if self._turn_audio is not None:
            return  # VAD and user-turn start frames both arrive for one turn
        self._turn_confirmed = False
        # The pre-roll already holds the audio frames that arrived before this one.
        self._turn_audio = bytearray(b"".join(self._pre_roll))

    def _end_pipeline_turn(self) -> None:
        audio, self._turn_audio = self._turn_audio, None
        self._turn_confirmed = False
        if audio is None or self._audio_format is None:
            return
        rate, channels = self._audio_format
        if len(audio) < self._bytes_for(self._params.min_turn_secs) or not audio:
            logger.debug(f"{self}: ignoring a {len(audio)}-byte turn (shorter than min_turn_secs)")
            return
        self._dispatch(self._make_turn(bytes(audio), rate, channels, "int16"))

    # -- own segmentation ----------------------------------------------------------

    def _new_segmenter(self) -> TurnSegmenter:
        from sarsteer_guard.audio.vad import TurnSegmenter

        p = self._params
        return TurnSegmenter(
            aggressiveness=p.vad_aggressiveness,
            frame_ms=20,
            end_silence_ms=p.vad_end_silence_ms,
            min_speech_ms=p.vad_min_speech_ms,
            max_turn_s=p.max_turn_secs,
            padding_ms=int(1000 * (self._pre_roll_secs or 0.15)),
        )

    async def _segment(self, frame: InputAudioRawFrame) -> None:
        if self._segmenter is None:
            self._segmenter = self._new_segmenter()
        seg = self._segmenter
        turns = seg.push(frame.audio, frame.sample_rate, channels=frame.num_channels)
        if seg.in_speech and not turns:
            if self._own_speech_since is None:
                self._own_speech_since = seg.position_s
            elif (
                not self._own_speech_announced
                and seg.position_s - self._own_speech_since >= self._params.barge_in_ms / 1000
            ):
                await self._announce_own_speech()
        for turn in turns:
            await self._on_own_turn(turn)
        if not seg.in_speech and self._own_speech_since is not None and not turns:
            # Speech the segmenter dropped (a click, a cough): close what was announced.
            await self._reset_own_speech(close=True)

    def _own_segmentation_confirmed(self) -> bool:
        """Own mode, or auto mode after a whole turn came without pipeline VAD."""
        return self._params.turn_detection == "own" or self._saw_own_turn

    async def _announce_own_speech(self) -> None:
        """Speech long enough to be a barge-in: behave like a pipeline VAD would."""
        self._own_speech_announced = True
        if not self._own_segmentation_confirmed():
            return  # auto mode's first turn: nothing to interrupt, pipeline VAD may appear
        if self._params.emit_user_speaking_frames:
            await self.push_frame(UserStartedSpeakingFrame())
            self._own_start_pushed = True
        if self._params.allow_interruptions:
            # The bot may still be speaking an earlier answer: stop TTS and output too.
            await self._cancel_responses()
            await self.broadcast_interruption()  # type: ignore[no-untyped-call]  # unannotated upstream

    async def _reset_own_speech(self, *, close: bool) -> None:
        if close and self._own_start_pushed:
            await self.push_frame(UserStoppedSpeakingFrame())
        self._own_speech_since = None
        self._own_speech_announced = False
        self._own_start_pushed = False

    async def _on_own_turn(self, speech: SpeechTurn) -> None:
        self._saw_own_turn = True
        if self._params.emit_user_speaking_frames:
            if not self._own_start_pushed:
                await self.push_frame(UserStartedSpeakingFrame())
            await self.push_frame(UserStoppedSpeakingFrame())
        await self._reset_own_speech(close=False)
        self._dispatch(self._make_turn(speech.audio, speech.sample_rate, 1, "float32"))

    # -- responses -----------------------------------------------------------------

    def _make_turn(
        self,
        audio: Any,
        sample_rate: int,
        channels: int,
        sample_format: Literal["int16", "float32"],
    ) -> Turn:
        return Turn(
            audio=audio,
            sample_rate=sample_rate,
            channels=channels,
            sample_format=sample_format,
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
        if previous:
            # asyncio.wait, not await: cancelling this task must not cancel those.
            await asyncio.wait(previous)
        await self._ensure_started()
        if self._start_error is not None:
            await self._report_error(
                TurnError(turn.turn_id, "unavailable", f"guard not started: {self._start_error}")
            )
            return
        stream = self.guard.respond(turn)
        opened = False
        streamed = False
        await self.start_ttfb_metrics()
        await self.start_processing_metrics()
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    if not event.text:
                        continue
                    if not opened:
                        opened = True
                        await self.stop_ttfb_metrics()
                        await self.push_frame(LLMFullResponseStartFrame())
                    streamed = True
                    await self.push_frame(LLMTextFrame(event.text))
                elif isinstance(event, TurnDecision):
                    if not streamed and event.text:
                        # A guard that serves the whole answer at the end (no deltas).
                        if not opened:
                            opened = True
                            await self.stop_ttfb_metrics()
                            await self.push_frame(LLMFullResponseStartFrame())
                        await self.push_frame(LLMTextFrame(event.text))
                    await self._report_decision(event)
                elif isinstance(event, TurnError):
                    await self._report_error(event)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a broken guard must not take the pipeline down
            await self.push_error(
                f"SARSteer turn {turn.turn_id} failed: {e}",
                exception=e,
                category=ErrorCategory.UNKNOWN,
            )
        finally:
            await _aclose(stream)
            await self.stop_processing_metrics()
            if opened:
                await self.push_frame(LLMFullResponseEndFrame())

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

    # -- guard ---------------------------------------------------------------------

    def _build_guard(self) -> SpeechGuard:
        """Import lazily: the in-process Guard pulls torch, a RemoteGuard does not."""
        from sarsteer_guard.guard.factory import build_guard

        return build_guard(remote_url=self._remote_url, **self._guard_config)

    async def _start_guard(self) -> None:
        try:
            await self.guard.start()
            self._guard_started = True
        except Exception as e:
            logger.error(f"{self}: SARSteer guard failed to start: {e}")
            self._start_error = e
            if self._running:
                await self._push_start_error()

    async def _push_start_error(self) -> None:
        await self.push_error(
            f"SARSteer guard failed to start: {self._start_error}",
            exception=self._start_error,
            force_treat_as_permanent=True,
        )

    async def _ensure_started(self) -> None:
        """Wait for the background start (or start now if setup never ran)."""
        if self._guard_started or self._start_error is not None:
            return
        if self._start_task is None:
            self._start_task = self.create_task(self._start_guard(), name="sarsteer-guard-start")
        # asyncio.wait, not await: a cancelled turn must not cancel the model load.
        await asyncio.wait({self._start_task})

    async def _shutdown(self) -> None:
        self._running = False
        await self._cancel_responses()
        if self._start_task is not None and not self._start_task.done():
            await self.cancel_task(self._start_task)
        self._start_task = None
        if not (self._owns_guard and self._guard is not None and self._guard_started):
            return
        self._guard_started = False
        try:
            await self._guard.close()
        except Exception as e:
            logger.warning(f"{self}: closing the SARSteer guard failed: {e}")


async def _aclose(stream: AsyncIterator[GuardEvent]) -> None:
    """Close a response stream: the Guard's signal that the turn is over (or cancelled)."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception as e:
            logger.debug(f"closing a SARSteer response stream raised {e!r}")
