"""Frame flow of SARSteerGuardService in a real Pipecat pipeline (ScriptedGuard, real speech)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
import pytest
import sarsteer_guard
import sarsteer_guard.errors
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMServiceMetadataFrame,
    LLMTextFrame,
    SpeechControlParamsFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test
from sarsteer_guard.guard.events import GuardEvent, Turn, TurnError
from sarsteer_guard.testing.scripted import ScriptedGuard

from pipecat_sarsteer import (
    SARSteerContextUpdateFrame,
    SARSteerDecisionFrame,
    SARSteerGuardService,
    SARSteerParams,
)

pytestmark = pytest.mark.espeak

RESPONSE_TYPES = (
    LLMFullResponseStartFrame,
    LLMTextFrame,
    SARSteerDecisionFrame,
    LLMFullResponseEndFrame,
)
QUESTION = "How do I bake bread at home?"


def responses(frames: Sequence[Frame]) -> list[Frame]:
    return [f for f in frames if isinstance(f, RESPONSE_TYPES)]


def kinds(frames: Sequence[Frame]) -> list[str]:
    names = {
        LLMFullResponseStartFrame: "start",
        LLMTextFrame: "text",
        SARSteerDecisionFrame: "decision",
        LLMFullResponseEndFrame: "end",
    }
    out: list[str] = []
    for f in responses(frames):
        name = next(n for t, n in names.items() if isinstance(f, t))
        if not (name == "text" and out and out[-1] == "text"):
            out.append(name)
    return out


@pytest.fixture
def pipeline_turn(
    speech: Callable[[str], np.ndarray],
    to_frames: Callable[..., list[InputAudioRawFrame]],
    pause: Callable[[float], np.ndarray],
) -> Callable[..., list[Frame]]:
    """A user turn as a VAD pipeline delivers it: the start frame 0.24 s into speech."""

    def make(text: str = QUESTION) -> list[Frame]:
        x = speech(text)
        onset = int(0.24 * 16000)  # whole 20 ms frames
        return [
            *to_frames(pause(0.3)),
            *to_frames(x[:onset]),
            UserStartedSpeakingFrame(),
            *to_frames(x[onset:]),
            *to_frames(pause(0.4)),
            UserStoppedSpeakingFrame(),
        ]

    return make


async def test_turn_streams_start_text_decision_end(
    pipeline_turn: Callable[..., list[Frame]], speech: Callable[[str], np.ndarray]
) -> None:
    guard = ScriptedGuard(reply="Mix flour, water, yeast and salt.")
    service = SARSteerGuardService(guard, context={"tier": "adult"}, session_id="call-1")
    decisions: list[Any] = []

    async def on_decision(_service: SARSteerGuardService, decision: Any) -> None:
        decisions.append(decision)

    service.add_event_handler("on_decision", on_decision)

    frames = pipeline_turn(QUESTION)
    down, _ = await run_test(service, frames_to_send=frames)

    assert kinds(down) == ["start", "text", "decision", "end"]
    texts = [f.text for f in down if isinstance(f, LLMTextFrame)]
    assert len(texts) > 1  # streamed, not one blob
    assert "".join(texts) == guard.reply
    # The service announces itself as realtime so the user aggregator needs no transcript.
    meta = [f for f in down if isinstance(f, LLMServiceMetadataFrame)]
    assert meta
    assert meta[0].is_realtime_service
    # Every audio and turn frame still reaches the rest of the pipeline.
    sent_audio = sum(isinstance(f, InputAudioRawFrame) for f in frames)
    assert sum(isinstance(f, InputAudioRawFrame) for f in down) == sent_audio
    assert any(isinstance(f, UserStoppedSpeakingFrame) for f in down)

    [turn] = guard.turns
    assert turn.session_id == "call-1"
    assert dict(turn.context) == {"tier": "adult"}
    # The pre-roll recovered the speech onset sent before UserStartedSpeakingFrame.
    started = next(i for i, f in enumerate(frames) if isinstance(f, UserStartedSpeakingFrame))
    onset = b"".join(f.audio for f in frames[:started] if isinstance(f, InputAudioRawFrame))
    assert isinstance(turn.audio, bytes)
    assert turn.audio.startswith(onset[-16000:])
    assert ScriptedGuard.audio_seconds(turn) >= len(speech(QUESTION)) / 16000
    [decision_frame] = [f for f in down if isinstance(f, SARSteerDecisionFrame)]
    assert decision_frame.decision.turn_id == turn.turn_id
    assert not decision_frame.refused
    assert guard.started
    assert not guard.closed
    assert [d.turn_id for d in decisions] == [turn.turn_id]


async def test_pre_roll_sized_from_pipeline_vad(
    pipeline_turn: Callable[..., list[Frame]],
) -> None:
    guard = ScriptedGuard()
    service = SARSteerGuardService(guard)
    frames = [SpeechControlParamsFrame(vad_params=VADParams(start_secs=0.1)), *pipeline_turn()]
    await run_test(service, frames_to_send=frames)
    [turn] = guard.turns
    started = next(i for i, f in enumerate(frames) if isinstance(f, UserStartedSpeakingFrame))
    after = sum(len(f.audio) for f in frames[started:] if isinstance(f, InputAudioRawFrame))
    # 0.1 s start_secs + 0.3 s margin of pre-roll, not the 0.5 s default.
    assert ScriptedGuard.audio_seconds(turn) == pytest.approx(after / 32000 + 0.4, abs=0.03)


async def test_interruption_cancels_the_stream(
    pipeline_turn: Callable[..., list[Frame]],
) -> None:
    reply = "one two three four five six seven eight nine ten eleven twelve"
    guard = ScriptedGuard(reply=reply, delay_s=0.1)
    service = SARSteerGuardService(guard)
    frames = [*pipeline_turn(), SleepFrame(sleep=0.35), InterruptionFrame()]
    down, _ = await run_test(service, frames_to_send=frames)

    texts = [f for f in down if isinstance(f, LLMTextFrame)]
    assert 0 < len(texts) < len(reply.split())
    assert not any(isinstance(f, SARSteerDecisionFrame) for f in down)
    [turn] = guard.turns
    assert guard.cancelled == [turn.turn_id]
    # The response is still closed, so downstream state (aggregators, TTS) resets.
    assert kinds(down)[0] == "start"
    assert kinds(down)[-1] == "end"


async def test_refusal_serves_message_and_decision(
    pipeline_turn: Callable[..., list[Frame]],
) -> None:
    guard = ScriptedGuard(refuse=True, refusal_message="I can't help with that.")
    service = SARSteerGuardService(guard)
    down, _ = await run_test(service, frames_to_send=pipeline_turn("How do I make a weapon?"))

    assert kinds(down) == ["start", "text", "decision", "end"]
    assert "".join(f.text for f in down if isinstance(f, LLMTextFrame)) == guard.refusal_message
    [frame] = [f for f in down if isinstance(f, SARSteerDecisionFrame)]
    assert frame.refused
    assert frame.decision.text == guard.refusal_message


async def test_own_segmentation_without_pipeline_vad(
    speech: Callable[[str], np.ndarray],
    to_frames: Callable[..., list[InputAudioRawFrame]],
    pause: Callable[[float], np.ndarray],
) -> None:
    guard = ScriptedGuard(reply="Sure.")
    service = SARSteerGuardService(guard)  # auto: no VAD frames arrive, so it segments itself
    a, b = speech("What is the weather today?"), speech("And what about tomorrow?")
    frames: list[Frame] = [
        *to_frames(pause(0.3)),
        *to_frames(a),
        *to_frames(pause(1.0)),
        SleepFrame(sleep=0.3),
        *to_frames(b),
        *to_frames(pause(1.0)),
    ]
    down, _ = await run_test(service, frames_to_send=frames)

    assert len(guard.turns) == 2
    for turn, x in zip(guard.turns, (a, b), strict=True):
        assert turn.sample_rate == 16000
        assert turn.sample_format == "float32"
        assert ScriptedGuard.audio_seconds(turn) == pytest.approx(len(x) / 16000, abs=0.5)
    assert kinds(down) == ["start", "text", "decision", "end"] * 2
    # Like a VAD, it tells the rest of the pipeline where the user's turns were.
    assert sum(isinstance(f, UserStartedSpeakingFrame) for f in down) == 2
    assert sum(isinstance(f, UserStoppedSpeakingFrame) for f in down) == 2
    # The second turn's speech interrupted the bot (whose TTS could still be talking).
    assert any(isinstance(f, InterruptionFrame) for f in down)


async def test_own_segmentation_barge_in_cancels_response(
    speech: Callable[[str], np.ndarray],
    to_frames: Callable[..., list[InputAudioRawFrame]],
    pause: Callable[[float], np.ndarray],
) -> None:
    guard = ScriptedGuard(reply=" ".join(["word"] * 40), delay_s=0.05)
    service = SARSteerGuardService(guard, params=SARSteerParams(turn_detection="own"))
    frames: list[Frame] = [
        *to_frames(speech("Tell me a long story.")),
        *to_frames(pause(0.8)),
        SleepFrame(sleep=0.3),
        *to_frames(speech("Stop, stop.")),
        *to_frames(pause(0.8)),
    ]
    await run_test(service, frames_to_send=frames)
    assert len(guard.turns) == 2
    assert guard.cancelled == [guard.turns[0].turn_id]


async def test_context_update_frame_reaches_next_turn(
    pipeline_turn: Callable[..., list[Frame]],
) -> None:
    guard = ScriptedGuard(reply="Okay.")
    service = SARSteerGuardService(guard, context={"tier": "adult", "locale": "en"})
    frames = [
        *pipeline_turn(),
        SARSteerContextUpdateFrame(context={"tier": "minor"}, session_id="call-7"),
        *pipeline_turn(),
    ]
    down, _ = await run_test(service, frames_to_send=frames)
    first, second = guard.turns
    assert dict(first.context) == {"tier": "adult", "locale": "en"}
    assert dict(second.context) == {"tier": "minor", "locale": "en"}
    assert second.session_id == "call-7"
    assert first.session_id != "call-7"
    assert not any(isinstance(f, SARSteerContextUpdateFrame) for f in down)  # consumed


class FailsFirstTurn(ScriptedGuard):
    """Fails its first turn with a TurnError, then answers normally."""

    async def respond(self, turn: Turn) -> AsyncIterator[GuardEvent]:
        if not self.turns:
            self.turns.append(turn)
            yield TurnError(turn_id=turn.turn_id, kind="audio", message="too short; speak again")
            return
        async for event in super().respond(turn):
            yield event


async def test_turn_error_becomes_error_frame_and_next_turn_works(
    pipeline_turn: Callable[..., list[Frame]],
) -> None:
    guard = FailsFirstTurn(reply="Second time lucky.")
    service = SARSteerGuardService(guard)
    errors: list[TurnError] = []

    async def on_turn_error(_service: SARSteerGuardService, error: TurnError) -> None:
        errors.append(error)

    service.add_event_handler("on_turn_error", on_turn_error)

    frames = [*pipeline_turn(), SleepFrame(sleep=0.1), *pipeline_turn()]
    down, up = await run_test(service, frames_to_send=frames)

    [error] = [f for f in up if isinstance(f, ErrorFrame)]
    assert "too short; speak again" in error.error
    assert not error.fatal
    assert service.is_usable
    assert kinds(down) == ["start", "text", "decision", "end"]
    assert "".join(f.text for f in down if isinstance(f, LLMTextFrame)) == guard.reply
    assert [e.kind for e in errors] == ["audio"]


async def test_builds_and_closes_its_own_guard(
    monkeypatch: pytest.MonkeyPatch, pipeline_turn: Callable[..., list[Frame]]
) -> None:
    built: list[ScriptedGuard] = []

    def fake_guard(**kwargs: object) -> ScriptedGuard:
        built.append(ScriptedGuard())
        return built[-1]

    monkeypatch.setattr("sarsteer_guard.guard.core.Guard", fake_guard)
    service = SARSteerGuardService(model="tiny", policy="policy.yaml")
    assert not built  # constructors do no I/O
    down, _ = await run_test(service, frames_to_send=pipeline_turn())
    [guard] = built
    assert guard.started
    assert guard.closed
    assert kinds(down) == ["start", "text", "decision", "end"]


def test_remote_url_builds_a_remote_guard_without_connecting() -> None:
    service = SARSteerGuardService(remote_url="ws://127.0.0.1:9/v1/turns")
    assert type(service.guard).__name__ == "RemoteGuard"  # built lazily, no I/O yet


class BrokenStart(ScriptedGuard):
    async def start(self) -> None:
        raise sarsteer_guard.errors.ModelLoadError("no model at /nowhere; check the path")


async def test_failed_guard_start_is_reported_and_turns_error(
    pipeline_turn: Callable[..., list[Frame]],
) -> None:
    guard = BrokenStart()
    service = SARSteerGuardService(guard)
    down, up = await run_test(service, frames_to_send=pipeline_turn())
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert any("failed to start" in e and "/nowhere" in e for e in errors)
    assert not service.is_usable
    assert not responses(down)


async def test_in_a_real_bot_pipeline_with_silero_vad(
    speech: Callable[[str], np.ndarray],
    to_frames: Callable[..., list[InputAudioRawFrame]],
    pause: Callable[[float], np.ndarray],
) -> None:
    """The cascade shape minus network: user aggregator (Silero VAD) -> guard -> assistant."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )

    guard = ScriptedGuard(reply="Sure, here are the steps.")
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(), user_turn_stop_timeout=1.0
        ),
    )
    service = SARSteerGuardService(guard)
    pipeline = Pipeline([aggregators.user(), service, aggregators.assistant()])
    x = speech(QUESTION)
    audio = to_frames(np.concatenate([pause(0.3), x, pause(1.0)]))
    # Paced like a transport (100 ms bursts): the aggregator queues its VAD events
    # behind the audio it has received, so a flood would push them past the pre-roll.
    frames: list[Frame] = []
    for i in range(0, len(audio), 5):
        frames += [*audio[i : i + 5], SleepFrame(sleep=0.1)]
    frames.append(SleepFrame(sleep=1.5))
    down, _ = await run_test(pipeline, frames_to_send=frames)

    # Realtime mode: the aggregator ended the turn without any transcript.
    [turn] = guard.turns
    assert isinstance(turn.audio, bytes)
    # The whole utterance is in the turn: its first and last 50 ms of sound.
    stream = b"".join(f.audio for f in audio)
    voiced = np.flatnonzero(np.abs(x) > 0.01) + int(0.3 * 16000)
    first, last = int(voiced[0]), int(voiced[-1])
    assert stream[2 * first : 2 * (first + 800)] in turn.audio
    assert stream[2 * (last - 800) : 2 * last] in turn.audio
    assert any(isinstance(f, SARSteerDecisionFrame) for f in down)
    assert {"role": "assistant", "content": guard.reply} in context.messages


async def test_vad_blip_without_user_turn_is_dropped(
    pipeline_turn: Callable[..., list[Frame]],
    speech: Callable[[str], np.ndarray],
    to_frames: Callable[..., list[InputAudioRawFrame]],
    pause: Callable[[float], np.ndarray],
) -> None:
    from pipecat.frames.frames import VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame

    guard = ScriptedGuard(reply="Okay.")
    service = SARSteerGuardService(guard)
    blip = to_frames(speech("Hm."))
    frames = [
        *pipeline_turn(),
        VADUserStartedSpeakingFrame(),  # VAD heard something the turn strategies rejected
        *blip,
        VADUserStoppedSpeakingFrame(),
        *to_frames(pause(2.0)),
        *pipeline_turn(),
    ]
    await run_test(service, frames_to_send=frames)
    first, second = guard.turns
    blip_audio = b"".join(f.audio for f in blip)
    assert isinstance(second.audio, bytes)
    assert blip_audio[: len(blip_audio) // 2] not in second.audio
    assert ScriptedGuard.audio_seconds(second) == pytest.approx(
        ScriptedGuard.audio_seconds(first), abs=0.05
    )
