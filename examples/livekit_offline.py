"""Play a recording to a real LiveKit ``AgentSession`` in-process and print what the agent says.

No LiveKit server, but the same wiring as ``livekit_agent.py``: an ``AgentSession`` with
``sarsteer.RealtimeModel`` as its llm and ``turn_detection="realtime_llm"`` (the plugin's
webrtcvad finds the turns). The recording reaches the session through its audio input
as 24 kHz, 50 ms frames (what a room delivers), played by a polite caller who waits for
each answer before going on. Each reply the session adds to the conversation is printed
with the Guard's decision::

    python examples/livekit_offline.py question.wav [--policy policies/default.yaml]
        [--context channel=kids --context age=9] [--model tiny-planted]

Context values are typed as ``sarsteer-guard respond --context`` types them: ``9`` is a
number, ``true``/``false`` booleans, anything else text (quote to keep ``"02139"`` text).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.voice import SpeechHandle, io
from livekit.plugins import sarsteer

from sarsteer_guard.audio.decode import load_audio
from sarsteer_guard.cli._common import DefaultsHelpFormatter, parse_context
from sarsteer_guard.errors import GuardError
from sarsteer_guard.guard.events import TurnDecision

ROOM_RATE = 24000
FRAME = ROOM_RATE // 20  # 50 ms


def room_frames(audio: np.ndarray) -> list[rtc.AudioFrame]:
    """Float32 mono at 24 kHz -> int16 frames, plus a second of silence to end the turn."""
    audio = np.concatenate([audio, np.zeros(ROOM_RATE, dtype=np.float32)])
    pcm = np.clip(np.rint(audio * 32767.0), -32768, 32767).astype(np.int16)
    return [
        rtc.AudioFrame(pcm[i : i + FRAME].tobytes(), ROOM_RATE, 1, len(pcm[i : i + FRAME]))
        for i in range(0, len(pcm), FRAME)
    ]


class Caller(io.AudioInput):
    """The session's microphone: plays the recording, pausing while the agent answers.

    Frames go out only after :meth:`begin` (the session drops audio that arrives before
    it has started) and never while a reply the session created is still in progress,
    so each turn gets its answer before the next one is heard. ``finished`` is set once
    every frame was heard and every reply was given.
    """

    def __init__(self, frames: list[rtc.AudioFrame]) -> None:
        super().__init__(label="recording")
        self._frames = list(frames)
        self._replies: list[SpeechHandle] = []
        self._started = asyncio.Event()
        self.finished = asyncio.Event()

    def begin(self, session: AgentSession[None]) -> None:
        """Start playing into ``session``; its replies pause the recording."""
        session.on("speech_created", lambda ev: self._replies.append(ev.speech_handle))
        self._started.set()

    async def __anext__(self) -> rtc.AudioFrame:
        await self._started.wait()
        while self._replies:  # the caller listens to the answer before going on
            await self._replies.pop(0).wait_for_playout()
        if not self._frames:
            self.finished.set()
            await asyncio.Event().wait()  # the recording is over; the session closes us
        return self._frames.pop(0)


Reply = tuple[str, TurnDecision]


async def converse(
    model: sarsteer.RealtimeModel, audio: np.ndarray, *, timeout_s: float = 600.0
) -> list[Reply]:
    """What the agent says to ``audio`` (24 kHz float32), turn by turn, via an AgentSession.

    Returns the replies given within ``timeout_s``; the session is closed either way.
    """
    caller = Caller(room_frames(audio))
    session: AgentSession[None] = AgentSession(
        llm=model,
        vad=None,  # the model detects turns itself (webrtcvad)
        turn_handling={"turn_detection": "realtime_llm"},  # explicit: no cloud detector
        aec_warmup_duration=None,
        user_away_timeout=None,
    )
    session.input.audio = caller
    texts: dict[str, str] = {}  # assistant message id (= the Guard's turn id) -> text
    decisions: dict[str, TurnDecision] = {}
    closed = asyncio.Event()

    def added(ev: Any) -> None:
        if getattr(ev.item, "role", None) == "assistant":
            texts[ev.item.id] = ev.item.text_content or ""

    session.on("conversation_item_added", added)
    session.on("close", lambda _ev: closed.set())
    model.on("sarsteer_decision", lambda d: decisions.__setitem__(d.turn_id, d))
    await session.start(agent=Agent(instructions="You are a helpful assistant."), record=False)
    caller.begin(session)
    waits = [asyncio.ensure_future(e.wait()) for e in (caller.finished, closed)]
    await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    await session.aclose()
    return [(text, decisions[turn]) for turn, text in texts.items() if turn in decisions]


async def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, play the recording to the session, print the replies."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("wav", help="recording of the user (any rate, WAV/FLAC/OGG/MP3)")
    parser.add_argument("--model", default="tiny", help="audio LM: hub id, path, tiny-planted")
    parser.add_argument("--policy", default=None, help="policy YAML (default: shipped)")
    parser.add_argument(
        "--context", "-c", action="append", default=[], metavar="KEY=VALUE", help="turn context"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    args = parser.parse_args(argv)
    try:
        context = parse_context(args.context)
        audio = load_audio(args.wav, target_rate=ROOM_RATE)
        model = sarsteer.RealtimeModel(model=args.model, policy=args.policy, context=context)
        model.on("error", lambda e: print(f"error: {e.error}", file=sys.stderr))
        await model.start()
        try:
            answers = await converse(model, audio, timeout_s=args.timeout)
        finally:
            await model.aclose()
    except GuardError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not answers:
        print("no speech found in the recording", file=sys.stderr)
        return 1
    for i, (text, decision) in enumerate(answers, 1):
        verdict = "REFUSED" if decision.refused else "answered"
        print(f"turn {i} [{verdict}, rule={decision.rule}, alpha={decision.alpha}]: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
