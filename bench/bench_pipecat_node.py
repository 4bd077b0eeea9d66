"""Added latency of the Pipecat guard node over calling the Guard directly, JSON out.

Node: time from the ``UserStoppedSpeakingFrame`` entering the node to the first
``LLMTextFrame`` leaving it, in a real Pipecat pipeline. Direct: time from
``guard.respond(turn)`` to its first ``TextDelta`` for the very same turn (the node's
Turn is recorded and replayed). Turns alternate node/direct so drift hits both; every
turn gets a fresh session id so history does not grow. Reported: p50 (and p90) of the
paired differences over 50 turns after warm-up.

Uses the real Guard with the tiny model when ``sarsteer_guard.Guard`` is importable and
starts; otherwise ScriptedGuard (said so in the JSON: then it measures the node alone).

Run: .venv/bin/python bench/bench_pipecat_node.py [--turns 50] [--out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pipecat
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner
from pipecat_sarsteer import SARSteerGuardService, SARSteerParams

from sarsteer_guard.audio import float_to_pcm16
from sarsteer_guard.guard.events import GuardEvent, SpeechGuard, TextDelta, Turn
from sarsteer_guard.testing.scripted import ScriptedGuard
from sarsteer_guard.testing.speech import synthesize

RATE = 16000
STEP = RATE * 20 // 1000 * 2  # 20 ms of int16 mono


class RecordingGuard:
    """Delegates to a guard and keeps the last Turn the node built, for the replay."""

    def __init__(self, inner: SpeechGuard) -> None:
        self.inner = inner
        self.last: Turn | None = None

    @property
    def ready(self) -> bool:
        return self.inner.ready

    @property
    def queue_depth(self) -> int | None:
        return self.inner.queue_depth

    def forget_session(self, session_id: str) -> None:
        self.inner.forget_session(session_id)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def respond(self, turn: Turn) -> AsyncIterator[GuardEvent]:
        self.last = turn
        return self.inner.respond(turn)


class Stamp(FrameProcessor):
    """Before the node: when did end of speech enter it."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped_at = 0.0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, UserStoppedSpeakingFrame):
            self.stopped_at = time.perf_counter()
        await self.push_frame(frame, direction)


class Probe(FrameProcessor):
    """After the node: first text frame, and the end of each response."""

    def __init__(self) -> None:
        super().__init__()
        self.first_text_at: float | None = None
        self.done = asyncio.Event()
        self.marker: Frame | None = None
        self.marker_seen = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame) and self.first_text_at is None:
            self.first_text_at = time.perf_counter()
        elif isinstance(frame, LLMFullResponseEndFrame):
            self.done.set()
        if frame is self.marker:
            self.marker_seen.set()
        await self.push_frame(frame, direction)


def speech_frames(pcm: bytes) -> list[Frame]:
    audio = [
        InputAudioRawFrame(audio=pcm[i : i + STEP], sample_rate=RATE, num_channels=1)
        for i in range(0, len(pcm), STEP)
    ]
    return [UserStartedSpeakingFrame(), *audio]


async def direct_first_delta(guard: SpeechGuard, turn: Turn) -> float:
    replay = dataclasses.replace(turn, turn_id=uuid.uuid4().hex, session_id=uuid.uuid4().hex)
    started = time.perf_counter()
    first: float | None = None
    async for event in guard.respond(replay):
        if isinstance(event, TextDelta) and event.text and first is None:
            first = time.perf_counter()
    if first is None:
        raise RuntimeError("the guard streamed no text; cannot time the first delta")
    return (first - started) * 1000


async def make_guard(scripted: bool = False) -> tuple[SpeechGuard, str, str]:
    if scripted:  # --scripted: the node's own overhead, without model noise
        return ScriptedGuard(delay_s=0.0), "scripted", "ScriptedGuard(delay_s=0) by --scripted"
    try:
        from sarsteer_guard import Guard

        guard: SpeechGuard = Guard(model="tiny")
        await guard.start()
        return guard, "real", "sarsteer_guard.Guard(model='tiny')"
    except Exception as e:  # not written yet, or cannot start here
        note = f"ScriptedGuard (real Guard unavailable: {type(e).__name__}: {e})"
        return ScriptedGuard(delay_s=0.02), "scripted", note[:300]


async def bench(turns: int, warmup: int, scripted: bool = False) -> dict[str, Any]:
    inner, kind, note = await make_guard(scripted)
    guard = RecordingGuard(inner)
    service = SARSteerGuardService(guard, params=SARSteerParams(turn_detection="pipeline"))
    stamp, probe = Stamp(), Probe()
    worker = PipelineWorker(
        Pipeline([stamp, service, probe]),
        params=PipelineParams(audio_in_sample_rate=RATE),
        cancel_on_idle_timeout=False,
    )
    pcm = float_to_pcm16(synthesize("How do I bake bread at home?"))
    node_ms: list[float] = []
    direct_ms: list[float] = []

    async def drive(_worker: PipelineWorker, _frame: Frame) -> None:
        asyncio.get_running_loop().create_task(loop())

    async def loop() -> None:
        try:
            for i in range(warmup + turns):
                service.update_context(session_id=uuid.uuid4().hex)
                probe.first_text_at = None
                probe.done.clear()
                probe.marker_seen.clear()
                speech = speech_frames(pcm)
                probe.marker = speech[-1]
                # A transport delivers audio in real time, so the node has no backlog
                # when speech ends: let this burst drain before ending the turn.
                await worker.queue_frames(speech)
                await asyncio.wait_for(probe.marker_seen.wait(), timeout=60)
                await worker.queue_frame(UserStoppedSpeakingFrame())
                await asyncio.wait_for(probe.done.wait(), timeout=120)
                if probe.first_text_at is None or guard.last is None:
                    raise RuntimeError("the node pushed no text")
                node = (probe.first_text_at - stamp.stopped_at) * 1000
                direct = await direct_first_delta(inner, guard.last)
                if i >= warmup:
                    node_ms.append(node)
                    direct_ms.append(direct)
        finally:
            await worker.queue_frame(EndFrame())

    worker.add_event_handler("on_pipeline_started", drive)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    await inner.close()
    if len(node_ms) < turns:
        raise RuntimeError(f"only {len(node_ms)} of {turns} turns completed")

    added = [n - d for n, d in zip(node_ms, direct_ms, strict=True)]
    q = statistics.quantiles(added, n=10)
    return {
        "bench": "pipecat_node",
        "guard": kind,
        "guard_detail": note,
        "turns": turns,
        "warmup_turns": warmup,
        "node_first_text_ms_p50": round(statistics.median(node_ms), 3),
        "direct_first_delta_ms_p50": round(statistics.median(direct_ms), 3),
        "added_latency_ms_p50": round(statistics.median(added), 3),
        "added_latency_ms_p90": round(q[8], 3),
        "definition": (
            "node: UserStoppedSpeakingFrame into the node -> first LLMTextFrame out; "
            "direct: guard.respond(same turn) -> first TextDelta; paired per turn"
        ),
        "turn_audio_s": round(len(pcm) / 2 / RATE, 2),
        "pipecat": getattr(pipecat, "__version__", "unknown"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="Pipecat guard node added latency")
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument(
        "--scripted", action="store_true", help="ScriptedGuard: time the node alone"
    )
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    result = bench(args.turns, args.warmup, args.scripted)
    text = json.dumps(asyncio.run(result), indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
