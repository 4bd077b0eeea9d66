"""Added latency of ``/v1/realtime`` over ``sarsteer.v1``, same server, same run.

One in-process server on loopback with the ScriptedGuard (no model: what is measured is
the protocol layer), one persistent WebSocket per protocol, the same espeak-ng
utterance each turn, the two protocols interleaved in a shuffled order every round.

- ``sarsteer.v1``: ``turn.start``, binary audio frames (16 kHz int16), then ``turn.end``
  at t0; first token = first ``delta``; total = ``decision``.
- realtime: ``input_audio_buffer.append`` (24 kHz pcm16 base64, as OpenAI clients send),
  then ``input_audio_buffer.commit`` + ``response.create`` at t0 (manual turn detection:
  the server's VAD wait would otherwise dominate); first token = first
  ``response.output_text.delta``; total = ``response.done``. Commit resamples to 16 kHz
  on the server, so that cost is inside the realtime numbers, as it is in production.

Prints one JSON object: p50/p95 per protocol and the added milliseconds (realtime minus
sarsteer.v1, per quantile and as the median of paired per-round differences).

Run: .venv/bin/python bench/bench_realtime.py [--rounds 200] [--out bench/results/realtime.json]
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, emit, latency_summary, machine_info, quiet_logs
from websockets.asyncio.client import ClientConnection, connect

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.server.protocol import encode_audio_frame
from sarsteer_guard.server.scripted import ScriptedGuard
from sarsteer_guard.server.settings import ServerSettings
from sarsteer_guard.server.testing import serve_in_thread
from sarsteer_guard.testing.speech import synthesize

TEXT = "What is the weather like in Paris today?"
CHUNK_MS = 100


async def v1_turn(ws: ClientConnection, audio16: bytes, n: int) -> tuple[float, float]:
    turn_id = f"t{n}"
    await ws.send(json.dumps({"type": "turn.start", "turn_id": turn_id, "session_id": "bench"}))
    step = 16000 * 2 * CHUNK_MS // 1000
    for i in range(0, len(audio16), step):
        await ws.send(encode_audio_frame(turn_id, audio16[i : i + step]))
    await ws.send(json.dumps({"type": "turn.end", "turn_id": turn_id}))
    t0 = time.perf_counter()
    first = None
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "delta" and first is None:
            first = time.perf_counter() - t0
        elif message["type"] == "decision":
            return first or 0.0, time.perf_counter() - t0
        elif message["type"] == "error":
            raise RuntimeError(message)


async def realtime_turn(ws: ClientConnection, appends: list[str]) -> tuple[float, float]:
    for event in appends:
        await ws.send(event)
    await ws.send('{"type":"input_audio_buffer.commit"}')
    t0 = time.perf_counter()
    await ws.send('{"type":"response.create"}')
    first = None
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == "response.output_text.delta" and first is None:
            first = time.perf_counter() - t0
        elif event["type"] == "response.done":
            if event["response"]["status"] != "completed":
                raise RuntimeError(event)
            return first or 0.0, time.perf_counter() - t0
        elif event["type"] == "error":
            raise RuntimeError(event)


async def run(port: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    audio16 = float_to_pcm16(synthesize(TEXT, rate=16000))
    pcm24 = float_to_pcm16(synthesize(TEXT, rate=24000))
    step = 24000 * 2 * CHUNK_MS // 1000
    appends = [
        json.dumps(
            {
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(pcm24[i : i + step]).decode(),
            }
        )
        for i in range(0, len(pcm24), step)
    ]
    out: dict[str, dict[str, list[float]]] = {
        p: {"first": [], "total": []} for p in ("sarsteer.v1", "realtime")
    }
    rng = random.Random(0)  # noqa: S311 - run order, not security
    async with (
        connect(f"ws://127.0.0.1:{port}/v1/turns", compression=None) as v1,
        connect(f"ws://127.0.0.1:{port}/v1/realtime?model=bench", compression=None) as rt,
    ):
        await v1.recv()  # hello
        await rt.recv()  # session.created
        await rt.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"audio": {"input": {"turn_detection": None}}},
                }
            )
        )
        await rt.recv()  # session.updated
        for n in range(rounds):
            order = ["sarsteer.v1", "realtime"]
            rng.shuffle(order)
            for name in order:
                first, total = await (
                    v1_turn(v1, audio16, n) if name == "sarsteer.v1" else realtime_turn(rt, appends)
                )
                out[name]["first"].append(first)
                out[name]["total"].append(total)
    return out


def added(rt: list[float], v1: list[float]) -> dict[str, float]:
    a, b = latency_summary(rt), latency_summary(v1)
    paired = statistics.median(r - s for r, s in zip(rt, v1, strict=True)) * 1000
    return {
        "p50_ms": round(a["p50_ms"] - b["p50_ms"], 2),
        "p95_ms": round(a["p95_ms"] - b["p95_ms"], 2),
        "paired_median_ms": round(paired, 2),
    }


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--delay-s", type=float, default=0.002, help="ScriptedGuard per word")
    args = parser.parse_args()
    quiet_logs()
    guard = ScriptedGuard(reply="Sure, here are the steps you asked for.", delay_s=args.delay_s)
    settings = ServerSettings(rate_limit_per_s=0, max_open_turns=4)
    with serve_in_thread(guard, settings) as server:
        samples = asyncio.run(run(server.settings.port, args.rounds))
    v1, rt = samples["sarsteer.v1"], samples["realtime"]
    result: dict[str, Any] = {
        "benchmark": "realtime_added_latency",
        "guard": f"ScriptedGuard(delay_s={args.delay_s}, 8 words)",
        "utterance_s": round(len(synthesize(TEXT, rate=16000)) / 16000, 2),
        "rounds": args.rounds,
        "end_to_first_token": {
            "sarsteer.v1": latency_summary(v1["first"]),
            "realtime": latency_summary(rt["first"]),
            "added": added(rt["first"], v1["first"]),
        },
        "end_to_done": {
            "sarsteer.v1": latency_summary(v1["total"]),
            "realtime": latency_summary(rt["total"]),
            "added": added(rt["total"], v1["total"]),
        },
        "machine": machine_info(),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
