"""Harness for running the plugin inside a real, room-less AgentSession.

The framework's own pieces do the driving (AgentSession, AgentActivity, the TTS node);
only the edges are stand-ins: a microphone that plays given PCM, a speaker that keeps
what it is given, and a TTS that records the text it must speak. (A uniquely named
module rather than conftest, so it cannot collide with other test directories.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import Agent, AgentSession, APIConnectOptions, tts, utils
from livekit.agents.voice import io
from livekit.agents.voice.turn import TurnHandlingOptions
from livekit.plugins import sarsteer

ROOM_RATE = 24000  # LiveKit rooms deliver 24 kHz in 50 ms frames
FRAME_MS = 50

QUESTION = "How do I bake bread at home?"
SECOND = "What is the capital of France?"


def to_frames(audio: np.ndarray, rate: int = ROOM_RATE, frame_ms: int = FRAME_MS) -> list[Any]:
    """Cut float32 mono into int16 rtc.AudioFrames, the way a room delivers them."""
    pcm = np.clip(np.rint(audio * 32767.0), -32768, 32767).astype(np.int16)
    step = rate * frame_ms // 1000
    return [
        rtc.AudioFrame(
            data=pcm[i : i + step].tobytes(),
            sample_rate=rate,
            num_channels=1,
            samples_per_channel=len(pcm[i : i + step]),
        )
        for i in range(0, len(pcm), step)
    ]


async def eventually(predicate: Any, limit_s: float = 5.0) -> None:
    """Poll ``predicate()`` for state no event announces (e.g. a test double's fields)."""
    for _ in range(int(limit_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {limit_s} s")


def silence(seconds: float, rate: int = ROOM_RATE) -> np.ndarray:
    return np.zeros(round(seconds * rate), dtype=np.float32)


class Microphone(io.AudioInput):
    """An AudioInput fed by the test, frame by frame, in (faster than) real time."""

    def __init__(self) -> None:
        super().__init__(label="test-mic")
        self._ch = utils.aio.Chan[rtc.AudioFrame]()
        self._read = asyncio.Event()
        self.consumed = 0

    async def __anext__(self) -> rtc.AudioFrame:
        frame = await self._ch.__anext__()
        self.consumed += 1
        self._read.set()
        return frame

    async def play(self, audio: np.ndarray, *, pace_s: float = 0.0) -> None:
        """Send ``audio`` and wait until the session has read every frame."""
        frames = to_frames(audio)
        target = self.consumed + len(frames)
        for frame in frames:
            self._ch.send_nowait(frame)
            if pace_s:
                await asyncio.sleep(pace_s)
        while self.consumed < target:
            self._read.clear()
            await self._read.wait()

    def close(self) -> None:
        self._ch.close()


class Speaker(io.AudioOutput):
    """An AudioOutput that "plays" instantly and counts what it got."""

    def __init__(self) -> None:
        super().__init__(
            label="test-speaker",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=None,
        )
        self.frames = 0
        self._pushed = 0.0
        self.cleared = 0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if not self._pushed:
            self.on_playback_started(created_at=time.time())
        self.frames += 1
        self._pushed += frame.duration

    def flush(self) -> None:
        super().flush()
        if not self._pushed:
            return
        pushed, self._pushed = self._pushed, 0.0
        self.on_playback_finished(playback_position=pushed, interrupted=False)

    def clear_buffer(self) -> None:
        self.cleared += 1
        if not self._pushed:
            return
        pushed, self._pushed = self._pushed, 0.0
        self.on_playback_finished(playback_position=pushed, interrupted=True)


class _Chunked(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        tts_ = self._tts
        assert isinstance(tts_, RecordingTTS)
        tts_.texts.append(self.input_text)
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=tts_.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        # 10 ms of silence per character: enough to be "speech" of a plausible length.
        output_emitter.push(b"\x00\x00" * (tts_.sample_rate // 100) * max(len(self.input_text), 1))
        output_emitter.flush()


class RecordingTTS(tts.TTS[Any]):
    """A non-streaming TTS (the session wraps it in its sentence StreamAdapter)."""

    def __init__(self) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False), sample_rate=16000, num_channels=1
        )
        self.texts: list[str] = []

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions | None = None
    ) -> tts.ChunkedStream:
        return _Chunked(tts=self, input_text=text, conn_options=conn_options or APIConnectOptions())


@dataclass
class Harness:
    """A started AgentSession around the plugin, with its edges exposed."""

    session: AgentSession[None]
    model: sarsteer.RealtimeModel
    mic: Microphone
    speaker: Speaker
    tts: RecordingTTS
    replies: list[str] = field(default_factory=list)
    decisions: list[Any] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    agent_states: list[str] = field(default_factory=list)
    interrupted: list[bool] = field(default_factory=list)

    @property
    def rt_session(self) -> sarsteer.RealtimeSession:
        sess = self.model._sessions
        assert len(sess) == 1
        return next(iter(sess))

    async def wait_replies(self, n: int, limit_s: float = 20.0) -> list[str]:
        """Wait until ``n`` assistant messages were added to the conversation."""
        await self.wait_for(lambda: len(self.replies) >= n, limit_s)
        return self.replies

    async def wait_for(self, predicate: Any, limit_s: float = 20.0) -> None:
        """Wait until ``predicate()`` holds; it is checked after every session event."""
        async with asyncio.timeout(limit_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def aclose(self) -> None:
        self.mic.close()
        await self.session.aclose()
        await self.model.aclose()


#: ``speech(text)``: espeak-ng speech at the room rate (the ``speech`` fixture).
Speech = Callable[[str], np.ndarray]
#: ``await harness_factory(model, turn_detection=...)`` (the ``harness_factory`` fixture).
HarnessFactory = Callable[..., Awaitable["Harness"]]


async def start_harness(model: sarsteer.RealtimeModel, *, turn_detection: str) -> Harness:
    """Start an AgentSession with ``model`` as its llm, a TTS, and test audio edges.

    ``turn_detection`` is always explicit: left unset the session tries a cloud detector.
    """
    mic, speaker, voice = Microphone(), Speaker(), RecordingTTS()
    turn_handling: TurnHandlingOptions = {
        "turn_detection": turn_detection,  # type: ignore[typeddict-item]  # a str from tests
        # The test speaker cannot pause, so there is nothing to resume.
        "interruption": {"resume_false_interruption": False},
    }
    session: AgentSession[None] = AgentSession(
        llm=model,
        vad=None,
        tts=voice,
        turn_handling=turn_handling,
        aec_warmup_duration=None,
        user_away_timeout=None,
    )
    session.input.audio = mic
    session.output.audio = speaker
    h = Harness(session=session, model=model, mic=mic, speaker=speaker, tts=voice)

    @session.on("conversation_item_added")
    def _added(ev: Any) -> None:
        if getattr(ev.item, "role", None) == "assistant":
            h.replies.append(ev.item.text_content or "")
            h.interrupted.append(bool(ev.item.interrupted))
            h.changed.set()

    @session.on("agent_state_changed")
    def _state(ev: Any) -> None:
        h.agent_states.append(ev.new_state)
        h.changed.set()

    @session.on("error")
    def _error(ev: Any) -> None:
        h.errors.append(ev.error)
        h.changed.set()

    model.on("sarsteer_decision", h.decisions.append)
    await session.start(agent=Agent(instructions="You are a helpful assistant."), record=False)
    return h
