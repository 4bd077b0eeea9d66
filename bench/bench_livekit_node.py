"""Latency the LiveKit plugin adds over calling the Guard directly.

Measured per turn, p50 over N turns (interleaved, since run-to-run noise here is 5-10%):

- direct:   ``guard.respond(turn)`` called -> first TextDelta;
- commit:   the session's end of turn (``commit_audio()`` + ``generate_reply()``, which
            includes trimming the buffered audio with webrtcvad) -> first text in the
            generation's text stream;
- own_vad:  the push_audio call that ends the turn (after ``end_silence_ms`` of
            silence) -> first text. The endpointing wait itself is not counted: it
            is a setting, not overhead.

``added_ms`` is plugin p50 minus direct p50. Uses the real Guard with the tiny model
when importable, else the ScriptedGuard (``"guard"`` in the JSON says which).

    python bench/bench_livekit_node.py [--turns 50] [--out bench.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import llm
from livekit.plugins import sarsteer

from sarsteer_guard.guard.events import TextDelta, Turn
from sarsteer_guard.log import configure_logging
from sarsteer_guard.testing.scripted import ScriptedGuard
from sarsteer_guard.testing.speech import synthesize

ROOM_RATE = 24000
FRAME = ROOM_RATE // 20  # 50 ms, as a room delivers
MAX_NEW_TOKENS = 8  # first-text latency does not depend on it; keeps the bench short
QUESTIONS = [
    "How do I bake bread at home?",
    "What is the capital of France?",
    "Tell me how to fix a flat tire.",
    "Which planet is closest to the sun?",
    "How can I learn to play the guitar?",
]


def frames(audio: np.ndarray) -> list[rtc.AudioFrame]:
    pcm = np.clip(np.rint(audio * 32767.0), -32768, 32767).astype(np.int16)
    return [
        rtc.AudioFrame(pcm[i : i + FRAME].tobytes(), ROOM_RATE, 1, len(pcm[i : i + FRAME]))
        for i in range(0, len(pcm), FRAME)
    ]


def make_guard(scripted: bool = False) -> tuple[Any, str]:
    if scripted:  # --scripted: the plugin's own overhead, without model noise
        return ScriptedGuard(delay_s=0.0), "ScriptedGuard (--scripted)"
    try:
        from sarsteer_guard.guard.core import Guard
    except ImportError:
        return ScriptedGuard(delay_s=0.0), "ScriptedGuard (real Guard not importable)"
    return Guard(model="tiny", max_new_tokens=MAX_NEW_TOKENS), "Guard(model='tiny')"


async def first_text(gen: llm.GenerationCreatedEvent) -> float:
    """Time of the first text chunk; drains the generation."""
    t = 0.0
    async for msg in gen.message_stream:
        async for delta in msg.text_stream:
            if delta and not t:
                t = time.perf_counter()
    return t


async def direct(guard: Any, audio16k: np.ndarray, session_id: str) -> float:
    turn = Turn(audio=audio16k, session_id=session_id, max_new_tokens=MAX_NEW_TOKENS)
    t0 = time.perf_counter()
    t1 = 0.0
    async for ev in guard.respond(turn):
        if isinstance(ev, TextDelta) and ev.text and not t1:
            t1 = time.perf_counter()
    return (t1 - t0) * 1000


async def via_commit(sess: sarsteer.RealtimeSession, turn_frames: list[rtc.AudioFrame]) -> float:
    for f in turn_frames:  # arrives while the user speaks: not part of the latency
        sess.push_audio(f)
    t0 = time.perf_counter()
    sess.commit_audio()
    gen = await sess.generate_reply()
    return (await first_text(gen) - t0) * 1000


async def via_own_vad(sess: sarsteer.RealtimeSession, turn_frames: list[rtc.AudioFrame]) -> float:
    created: list[llm.GenerationCreatedEvent] = []
    sess.on("generation_created", created.append)
    try:
        for f in turn_frames:
            t0 = time.perf_counter()
            sess.push_audio(f)
            if created:
                return (await first_text(created[0]) - t0) * 1000
    finally:
        sess.off("generation_created", created.append)
    raise RuntimeError("the plugin's VAD found no turn end; check the speech fixture")


def summary(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=10)
    return {"p50": round(statistics.median(ms), 2), "p90": round(q[-1], 2), "n": len(ms)}


async def run(turns: int, scripted: bool = False) -> dict[str, Any]:
    guard, kind = make_guard(scripted)
    await guard.start()
    speech = [synthesize(q, rate=ROOM_RATE) for q in QUESTIONS]
    pad = np.zeros(ROOM_RATE // 4, dtype=np.float32)
    tail = np.zeros(ROOM_RATE, dtype=np.float32)  # > end_silence_ms (600 ms): ends the turn
    commit_frames = [frames(np.concatenate([pad, s, pad])) for s in speech]
    vad_frames = [frames(np.concatenate([pad, s, tail])) for s in speech]

    manual_model = sarsteer.RealtimeModel(guard, max_new_tokens=MAX_NEW_TOKENS)
    vad_model = sarsteer.RealtimeModel(guard, max_new_tokens=MAX_NEW_TOKENS)
    manual = manual_model.session(turn_detection_disabled=True)
    own = vad_model.session()
    # The audio the Guard hears through the plugin, so the direct path gets the same.
    trimmed: list[np.ndarray] = []
    for fr in commit_frames:
        for f in fr:
            manual.push_audio(f)
        manual.commit_audio()
        audio = manual._take_committed()
        assert audio is not None, "webrtcvad found no speech in the espeak-ng fixture"
        trimmed.append(audio)

    for i in range(3):  # warm-up: first calls pay allocator and cache costs
        await direct(guard, trimmed[i], "bench-direct")
        await via_commit(manual, commit_frames[i])

    results: dict[str, list[float]] = {"direct": [], "commit": [], "own_vad": []}
    for i in range(turns):
        k = i % len(speech)
        results["direct"].append(await direct(guard, trimmed[k], "bench-direct"))
        results["commit"].append(await via_commit(manual, commit_frames[k]))
        results["own_vad"].append(await via_own_vad(own, vad_frames[k]))

    await manual_model.aclose()
    await vad_model.aclose()
    await guard.close()
    stats = {name: summary(ms) for name, ms in results.items()}
    base = stats["direct"]["p50"]
    return {
        "benchmark": "livekit_node",
        "guard": kind,
        "turns": turns,
        "max_new_tokens": MAX_NEW_TOKENS,
        "metric": "ms from end of user turn to first reply text",
        "direct_ms": stats["direct"],
        "plugin_commit_ms": stats["commit"],
        "plugin_own_vad_ms": stats["own_vad"],
        "added_ms": {
            "commit_p50": round(stats["commit"]["p50"] - base, 2),
            "own_vad_p50": round(stats["own_vad"]["p50"] - base, 2),
        },
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument(
        "--scripted", action="store_true", help="ScriptedGuard: time the plugin alone"
    )
    args = parser.parse_args()
    configure_logging(level="WARNING")  # per-turn info logs would drown the report
    report = asyncio.run(run(args.turns, args.scripted))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
