"""vLLM backend vs the transformers engine: first-token latency and turns/s under concurrency.

Both engines serve the same tiny head-64 Qwen2-Audio checkpoint (written here in the hub
layout), float32, greedy, 64-token replies (``min_tokens``/``min_new_tokens`` = budget so
every reply has the same length). ``N`` concurrent sessions each run ``--turns`` turns back
to back (a turn starts when the session's previous reply ends, like a conversation); the
first-token latency of a turn is from submission to its first text. The same runs on vLLM
(compiled, vLLM's default) with every turn steered (alpha 0.5) give the steered/unsteered
throughput ratio.

Run: ``.venv/bin/python bench/bench_vllm.py --out bench/results/vllm.json``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, emit, latency_summary, machine_info, quiet_logs, ratio

from sarsteer_guard.backends.transformers import TransformersBackend
from sarsteer_guard.backends.vllm.engine import SteeringSet, VllmEngine, VllmEngineConfig, VllmRow
from sarsteer_guard.guard.backend import RowDone, RowFailed, RowRequest, SteeringSpec
from sarsteer_guard.models import Message, load_model
from sarsteer_guard.testing.vllm_models import write_tiny_vllm_checkpoint

REPLY = 64
PROMPTS = ("Describe this sound.", "What is the weather like today?", "hello", "Translate it.")


def conversation(i: int) -> list[Message]:
    rng = np.random.default_rng(i)
    audio = (0.1 * rng.standard_normal(int(16000 * (0.8 + 0.1 * (i % 5))))).astype(np.float32)
    return [Message("user", PROMPTS[i % len(PROMPTS)], audio)]


async def sessions_vllm(
    engine: VllmEngine, n: int, turns: int, vset: SteeringSet | None
) -> dict[str, Any]:
    firsts: list[float] = []
    tokens = 0

    async def session(s: int) -> None:
        nonlocal tokens
        for t in range(turns):
            row = VllmRow(
                conversation(s * 7 + t),
                REPLY,
                steering=vset,
                alpha=0.5 if vset else 0.0,
                min_new_tokens=REPLY,
            )
            done = await engine.generate(row)
            firsts.append(done.first_token_ms / 1000)
            tokens += len(done.token_ids)

    start = time.perf_counter()
    await asyncio.gather(*(session(s) for s in range(n)))
    wall = time.perf_counter() - start
    return {
        "first_token_ms": latency_summary(firsts),
        "turns_per_s": round(n * turns / wall, 3),
        "tokens": tokens,
        "wall_s": round(wall, 3),
    }


async def sessions_hf(engine: TransformersBackend, n: int, turns: int) -> dict[str, Any]:
    firsts: list[float] = []
    tokens = 0

    async def session(s: int) -> None:
        nonlocal tokens
        for t in range(turns):
            request = RowRequest(
                conversation=conversation(s * 7 + t),
                steering=SteeringSpec(),
                alpha=0.0,
                max_new_tokens=REPLY,
            )
            async for event in engine.submit(request).events():
                if isinstance(event, RowDone):
                    firsts.append(event.first_token_ms / 1000)
                    tokens += event.tokens
                elif isinstance(event, RowFailed):
                    raise event.error

    start = time.perf_counter()
    await asyncio.gather(*(session(s) for s in range(n)))
    wall = time.perf_counter() - start
    return {
        "first_token_ms": latency_summary(firsts),
        "turns_per_s": round(n * turns / wall, 3),
        "tokens": tokens,
        "wall_s": round(wall, 3),
    }


async def run_vllm(path: Path, levels: list[int], turns: int) -> dict[str, Any]:
    lm_vectors = torch.randn(4, 128, generator=torch.Generator().manual_seed(0)) * 3
    vset = SteeringSet(vectors=lm_vectors, digest="bench")
    engine = VllmEngine(
        VllmEngineConfig(model=str(path), dtype="float32", max_num_seqs=32, max_model_len=1024)
    )
    t0 = time.perf_counter()
    await engine.start()
    startup = time.perf_counter() - t0
    out: dict[str, Any] = {"startup_s": round(startup, 1), "unsteered": {}, "steered": {}}
    await sessions_vllm(engine, 4, 1, None)  # warm
    for n in levels:
        out["unsteered"][str(n)] = await sessions_vllm(engine, n, turns, None)
    for n in (16,):  # steered vs unsteered, interleaved twice
        runs = []
        for _ in range(2):
            u = await sessions_vllm(engine, n, turns, None)
            s = await sessions_vllm(engine, n, turns, vset)
            runs.append((u["turns_per_s"], s["turns_per_s"]))
        out["steered"][str(n)] = {
            "unsteered_turns_per_s": [r[0] for r in runs],
            "steered_turns_per_s": [r[1] for r in runs],
            "ratio": ratio(sum(r[1] for r in runs), sum(r[0] for r in runs)),
        }
    await engine.stop()
    return out


async def run_hf(path: Path, levels: list[int], turns: int) -> dict[str, Any]:
    lm = load_model(str(path), dtype="float32")
    lm.model.generation_config.min_new_tokens = REPLY
    engine = TransformersBackend(lm, max_batch_size=16)
    engine.start()
    out: dict[str, Any] = {}
    try:
        await sessions_hf(engine, 2, 1)  # warm
        for n in levels:
            out[str(n)] = await sessions_hf(engine, n, turns)
    finally:
        engine.stop()
    return out


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--levels", default="1,4,16,32")
    parser.add_argument("--turns", type=int, default=2)
    args = parser.parse_args()
    quiet_logs()
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_vllm_checkpoint(Path(tmp) / "tiny")
        vllm = asyncio.run(run_vllm(path, levels, args.turns))
        hf = asyncio.run(run_hf(path, levels, args.turns))
    result: dict[str, Any] = {
        "benchmark": "vllm_vs_transformers",
        "reply_tokens": REPLY,
        "turns_per_session": args.turns,
        "vllm": vllm,
        "transformers": hf,
    }
    summary = {}
    for n in levels:
        v, h = vllm["unsteered"][str(n)], hf[str(n)]
        summary[str(n)] = {
            "first_token_p95_ratio_vllm_over_hf": ratio(
                v["first_token_ms"]["p95_ms"], h["first_token_ms"]["p95_ms"]
            ),
            "throughput_ratio_vllm_over_hf": ratio(v["turns_per_s"], h["turns_per_s"]),
        }
    result["summary"] = summary
    result["machine"] = machine_info()
    emit(result, args.out)


if __name__ == "__main__":
    main()
