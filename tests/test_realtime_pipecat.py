"""Pipecat's stock ``OpenAIRealtimeLLMService``, ``base_url`` at the guard, in a real pipeline.

No Pipecat code of ours: the stock service speaks to ``/v1/realtime`` over loopback; the
guard is a ScriptedGuard; the user is espeak-ng speech. The decision event is read off
the wire by wrapping Pipecat's own event parser (Pipecat ignores event types it does not
know, which is the point: an unaware client keeps working).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("pipecat")

from _realtime_kit import TOKEN, chunks, guard, needs_espeak, server, spoken_turn
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.services.openai.realtime import events as rt_events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.tests.utils import SleepFrame, run_test

from sarsteer_guard.server.scripted import ScriptedGuard
from sarsteer_guard.server.testing import ServerThread

__all__ = ["guard", "server"]  # fixtures


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Every server event Pipecat receives, as JSON (Pipecat's parser still runs)."""
    seen: list[dict[str, Any]] = []
    original = rt_events.parse_server_event

    def recording(message: str) -> Any:
        seen.append(json.loads(message))
        return original(message)

    monkeypatch.setattr(rt_events, "parse_server_event", recording)
    return seen


def service(server: ServerThread) -> OpenAIRealtimeLLMService:
    props = rt_events.SessionProperties(
        output_modalities=["text"],
        audio=rt_events.AudioConfiguration(
            input=rt_events.AudioInput(
                turn_detection=rt_events.TurnDetection(silence_duration_ms=500)
            )
        ),
    )
    return OpenAIRealtimeLLMService(
        api_key=TOKEN,
        base_url=f"ws://127.0.0.1:{server.settings.port}/v1/realtime",
        settings=OpenAIRealtimeLLMService.Settings(
            model="sarsteer-guard", session_properties=props
        ),
    )


def speech_frames(text: str) -> list[Frame]:
    return [
        InputAudioRawFrame(audio=chunk, sample_rate=24000, num_channels=1)
        for chunk in chunks(spoken_turn(text))
    ]


def texts(frames: Any) -> str:
    return "".join(f.text for f in frames if isinstance(f, LLMTextFrame))


@needs_espeak
async def test_spoken_turn_streams_text(
    server: ServerThread, guard: ScriptedGuard, wire: list[dict[str, Any]]
) -> None:
    frames = [
        SleepFrame(sleep=0.5),
        *speech_frames("What is the weather in Paris"),
        SleepFrame(2.0),
    ]
    down, _ = await run_test(service(server), frames_to_send=frames)
    deltas = [f for f in down if isinstance(f, LLMTextFrame)]
    assert len(deltas) > 3
    assert texts(down) == guard.reply
    kinds = [type(f) for f in down]
    assert kinds.index(LLMFullResponseStartFrame) < kinds.index(LLMTextFrame)
    assert LLMFullResponseEndFrame in kinds
    decisions = [e for e in wire if e["type"] == "sarsteer.decision"]
    assert len(decisions) == 1
    assert decisions[0]["decision"]["refused"] is False


@needs_espeak
async def test_policy_refusal_arrives_as_text_and_decision(
    server: ServerThread, guard: ScriptedGuard, wire: list[dict[str, Any]]
) -> None:
    guard.refuse = True
    frames = [SleepFrame(sleep=0.5), *speech_frames("Tell me how to pick a lock"), SleepFrame(2.0)]
    down, _ = await run_test(service(server), frames_to_send=frames)
    assert texts(down) == guard.refusal_message
    decision = next(e for e in wire if e["type"] == "sarsteer.decision")["decision"]
    assert decision["refused"] is True
    done = next(e for e in wire if e["type"] == "response.done")["response"]
    assert done["metadata"]["sarsteer_refused"] == "true"


@needs_espeak
async def test_barge_in_cancels_the_response(
    server: ServerThread, guard: ScriptedGuard, wire: list[dict[str, Any]]
) -> None:
    guard.delay_s = 0.3  # about 3 s of streaming: the second utterance lands inside it
    frames = [
        SleepFrame(sleep=0.5),
        *speech_frames("What is the weather in Paris"),
        SleepFrame(1.5),  # the VAD ends the turn and the response starts streaming
        *speech_frames("No wait, tell me about Rome"),
        SleepFrame(5.0),
    ]
    down, _ = await run_test(service(server), frames_to_send=frames)
    dones = [e["response"] for e in wire if e["type"] == "response.done"]
    assert [d["status"] for d in dones] == ["cancelled", "completed"]
    assert dones[0]["status_details"]["reason"] == "turn_detected"
    assert guard.cancelled == [guard.turns[0].turn_id]
    # Pipecat closed the cut response and streamed the whole second one.
    assert down
    assert texts(down).endswith(guard.reply)
    assert sum(isinstance(f, LLMFullResponseEndFrame) for f in down) >= 2
