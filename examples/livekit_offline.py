"""Push a recording through the LiveKit plugin in-process and print what the agent says.

No LiveKit server: the recording is cut into 24 kHz, 50 ms frames (what a room
delivers) and pushed into a ``sarsteer.RealtimeModel`` session, whose webrtcvad finds
the turns; each turn's guarded reply is printed with the Guard's decision::

    python examples/livekit_offline.py question.wav [--policy policies/default.yaml]
        [--context channel=kids] [--model tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import numpy as np
from livekit import rtc
from livekit.agents import llm
from livekit.plugins import sarsteer

from sarsteer_guard.audio.decode import load_audio
from sarsteer_guard.errors import GuardError
from sarsteer_guard.guard.events import ContextValue, TurnDecision

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


Reply = tuple[str, TurnDecision]


async def replies(model: sarsteer.RealtimeModel, audio: np.ndarray) -> list[Reply]:
    """What the agent would say to ``audio`` (24 kHz float32), turn by turn."""
    sess = model.session()
    generations: list[llm.GenerationCreatedEvent] = []
    decisions: dict[str, TurnDecision] = {}
    sess.on("generation_created", generations.append)
    sess.on("sarsteer_decision", lambda d: decisions.__setitem__(d.turn_id, d))
    out: list[Reply] = []
    for frame in room_frames(audio):
        sess.push_audio(frame)
        while generations:  # read each reply before the next turn can supersede it
            out.append(await _read(generations.pop(0), decisions))
    await sess.aclose()
    return out


async def _read(gen: llm.GenerationCreatedEvent, decisions: dict[str, TurnDecision]) -> Reply:
    text, turn_id = "", ""
    async for msg in gen.message_stream:
        turn_id = msg.message_id  # the plugin uses the Guard's turn id
        async for delta in msg.text_stream:
            text += delta
    return text, decisions[turn_id]


def _context(pairs: list[str]) -> dict[str, ContextValue]:
    context: dict[str, ContextValue] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--context wants key=value, got {pair!r}")
        context[key] = value
    return context


async def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the recording through the plugin, print the replies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav", help="recording of the user (any rate, WAV/FLAC/OGG/MP3)")
    parser.add_argument("--model", default="tiny", help="audio LM (hub id, path or 'tiny')")
    parser.add_argument("--policy", default=None, help="policy YAML (default: shipped)")
    parser.add_argument("--context", action="append", default=[], help="key=value turn context")
    args = parser.parse_args(argv)
    try:
        audio = load_audio(args.wav, target_rate=ROOM_RATE)
        model = sarsteer.RealtimeModel(
            model=args.model, policy=args.policy, context=_context(args.context)
        )
        model.on("error", lambda e: print(f"error: {e.error}", file=sys.stderr))
        await model.start()
        answers = await replies(model, audio)
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
