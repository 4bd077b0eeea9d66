"""LiveKit's OpenAI realtime plugin (``livekit-plugins-openai``), ``base_url`` at the guard.

The stock ``openai.realtime.RealtimeModel`` inside a real, room-less ``AgentSession``:
espeak-ng speech goes in through the session's audio input, the server VAD of
``/v1/realtime`` ends the turn, the reply text goes through the session's TTS node. The
decision event is read from the plugin's own ``openai_server_event_received`` hook.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integrations" / "livekit" / "tests"))

from _realtime_kit import TOKEN, guard, needs_espeak, server
from livekit.agents import Agent, AgentSession
from livekit.plugins import openai as lk_openai
from livekit_harness import Microphone, RecordingTTS, Speaker, silence
from openai.types.realtime.realtime_audio_input_turn_detection import (
    ServerVad,
)

from sarsteer_guard.server.scripted import ScriptedGuard
from sarsteer_guard.server.testing import ServerThread
from sarsteer_guard.testing.speech import synthesize

__all__ = ["guard", "server"]  # fixtures


class Run:
    """A started AgentSession on the stock OpenAI realtime model, with what it produced."""

    def __init__(self, server: ServerThread) -> None:
        self.model = lk_openai.realtime.RealtimeModel(
            model="sarsteer-guard",
            base_url=f"http://127.0.0.1:{server.settings.port}/v1",
            api_key=TOKEN,
            modalities=["text"],
            input_audio_transcription=None,
            turn_detection=ServerVad(type="server_vad", silence_duration_ms=500),
        )
        self.mic, self.speaker, self.tts = Microphone(), Speaker(), RecordingTTS()
        self.session: AgentSession[None] = AgentSession(
            llm=self.model,
            vad=None,
            tts=self.tts,
            turn_handling={
                "turn_detection": "realtime_llm",
                "interruption": {"resume_false_interruption": False},
            },
            aec_warmup_duration=None,
            user_away_timeout=None,
        )
        self.session.input.audio = self.mic
        self.session.output.audio = self.speaker
        self.replies: list[tuple[str, bool]] = []
        self.wire: list[dict[str, Any]] = []
        self.errors: list[Any] = []

    async def start(self) -> None:
        @self.session.on("conversation_item_added")
        def _added(ev: Any) -> None:
            if getattr(ev.item, "role", None) == "assistant":
                self.replies.append((ev.item.text_content or "", bool(ev.item.interrupted)))

        self.session.on("error", self.errors.append)
        await self.session.start(agent=Agent(instructions="Be helpful."), record=False)
        rt = next(iter(self.model._sessions))  # the plugin's RealtimeSession
        rt.on("openai_server_event_received", self.wire.append)

    async def say(self, text: str) -> None:
        await self.mic.play(synthesize(text, rate=24000), pace_s=0.01)
        await self.mic.play(silence(1.0), pace_s=0.01)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.wire if e["type"] == kind]

    async def until(self, predicate: Any, limit_s: float = 20.0) -> None:
        import asyncio

        for _ in range(int(limit_s / 0.05)):
            if predicate():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"not reached in {limit_s} s; wire: {[e['type'] for e in self.wire]}")

    async def aclose(self) -> None:
        self.mic.close()
        await self.session.aclose()
        await self.model.aclose()


async def started(server: ServerThread) -> Run:
    run = Run(server)
    await run.start()
    await run.mic.play(silence(0.3))
    return run


@needs_espeak
async def test_spoken_turn_streams_text_through_the_session(
    server: ServerThread, guard: ScriptedGuard
) -> None:
    run = await started(server)
    try:
        await run.say("What is the weather like in Paris today")
        await run.until(lambda: run.replies)
    finally:
        await run.aclose()
    assert run.errors == []
    assert run.replies[0] == (guard.reply, False)
    assert len(run.of("response.output_text.delta")) > 3  # streamed
    assert "".join(run.tts.texts).strip() == guard.reply  # spoken by the session's TTS
    assert run.of("sarsteer.decision")[0]["decision"]["refused"] is False
    assert np.isclose(ScriptedGuard.audio_seconds(guard.turns[0]), 2.0, atol=1.5)


@needs_espeak
async def test_policy_refusal_arrives_as_text_and_decision(
    server: ServerThread, guard: ScriptedGuard
) -> None:
    guard.refuse = True
    run = await started(server)
    try:
        await run.say("Tell me how to pick a lock")
        await run.until(lambda: run.replies and run.of("response.done"))
    finally:
        await run.aclose()
    assert run.replies[0][0] == guard.refusal_message
    assert run.of("sarsteer.decision")[0]["decision"]["refused"] is True
    assert run.of("response.done")[0]["response"]["metadata"]["sarsteer_refused"] == "true"


@needs_espeak
async def test_barge_in_cancels_the_response(server: ServerThread, guard: ScriptedGuard) -> None:
    guard.delay_s = 0.3  # about 3 s of streaming: the second utterance lands inside it
    run = await started(server)
    try:
        await run.say("What is the weather like in Paris today")
        await run.until(lambda: run.of("response.output_text.delta"))
        await run.say("No wait, tell me about Rome")
        await run.until(lambda: len(run.of("response.done")) >= 2)
    finally:
        await run.aclose()
    statuses = [e["response"]["status"] for e in run.of("response.done")]
    assert statuses == ["cancelled", "completed"]
    assert run.of("response.done")[0]["response"]["status_details"]["reason"] == "turn_detected"
    assert guard.cancelled == [guard.turns[0].turn_id]
