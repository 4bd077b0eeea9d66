"""vLLM backend vs transformers backend, both through the Guard's seam: first tokens, turns/s.

Both backends serve the built-in ``tiny`` model under its usual name (one head of 64, hub
layout), float32, greedy, 64-token replies (end-of-sequence ignored before the budget, so every
reply has the same length). ``N`` concurrent sessions each run ``--turns`` turns back to back
(a turn starts when the session's previous reply ends, like a conversation); a turn's first-token
latency is from ``submit`` to its first token. Rows are ``RowRequest`` s submitted to
``GenerationBackend.submit``, exactly as the Guard submits them. The vLLM backend runs vLLM's
default (compiled); the same runs with every turn steered (alpha 0.5, a vector set through
``SteeringSpec``) give the steered/unsteered throughput ratio.

Run: ``.venv-vllm/bin/python bench/bench_vllm.py --out bench/results/vllm.json``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, emit, latency_summary, machine_info, quiet_logs, ratio

from sarsteer_guard.backends import open_backend
from sarsteer_guard.backends.transformers import TransformersBackend
from sarsteer_guard.guard.backend import (
    GenerationBackend,
    RowDone,
    RowFailed,
    RowRequest,
    SteeringSpec,
)
from sarsteer_guard.guard.vectors import LoadedVectors
from sarsteer_guard.models import Message, load_model
from sarsteer_guard.models.base import ModelFacts
from sarsteer_guard.steering import SteeringVectors, VectorMeta

REPLY = 64
MODEL = "tiny"
PROMPTS = ("Describe this sound.", "What is the weather like today?", "hello", "Translate it.")


def conversation(i: int) -> list[Message]:
    rng = np.random.default_rng(i)
    audio = (0.1 * rng.standard_normal(int(16000 * (0.8 + 0.1 * (i % 5))))).astype(np.float32)
    return [Message("user", PROMPTS[i % len(PROMPTS)], audio)]


def bench_vectors(facts: ModelFacts) -> SteeringSpec:
    """A fixed random vector set for the served model (the seam's steering spec)."""
    tensor = torch.randn(
        facts.num_layers, facts.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    meta = VectorMeta(
        model_id=facts.model_id,
        model_fingerprint=facts.fingerprint,
        num_layers=facts.num_layers,
        hidden_size=facts.hidden_size,
        refusal_instruction="I cannot assist with that.",
        prompt="bench",
        k=1,
        lam=1.0,
        n_harmful=1,
        n_benign=1,
        calibration_digest="0" * 64,
    )
    return SteeringSpec(vectors=LoadedVectors.given(SteeringVectors(vectors=tensor * 3, meta=meta)))


async def sessions(
    backend: GenerationBackend, n: int, turns: int, spec: SteeringSpec | None = None
) -> dict[str, Any]:
    """``n`` sessions of ``turns`` turns through ``backend.submit``."""
    firsts: list[float] = []
    tokens = 0

    async def session(s: int) -> None:
        nonlocal tokens
        for t in range(turns):
            request = RowRequest(
                conversation=conversation(s * 7 + t),
                steering=spec or SteeringSpec(),
                alpha=0.5 if spec else 0.0,
                max_new_tokens=REPLY,
            )
            async for event in backend.submit(request).events():
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


async def steered_vs_unsteered(
    backend: GenerationBackend, n: int, turns: int, spec: SteeringSpec, pairs: int = 4
) -> dict[str, Any]:
    """Throughput steered over unsteered, in ``pairs`` back-to-back pairs of alternating order.

    The machine is shared, so load drifts between runs: alternating which run of a pair goes
    first cancels a steady drift, and the median of the per-pair ratios resists a burst.
    """
    unsteered: list[float] = []
    steered: list[float] = []
    for i in range(pairs):
        order = (None, spec) if i % 2 == 0 else (spec, None)
        for which in order:
            run = await sessions(backend, n, turns, which)
            (steered if which else unsteered).append(run["turns_per_s"])
    per_pair = sorted(s / u for s, u in zip(steered, unsteered, strict=True))
    return {
        "unsteered_turns_per_s": unsteered,
        "steered_turns_per_s": steered,
        "ratio": ratio(sum(steered), sum(unsteered)),
        "median_pair_ratio": round(float(np.median(per_pair)), 4),
    }


async def run_vllm(levels: list[int], turns: int, steered_levels: list[int]) -> dict[str, Any]:
    backend = open_backend(
        "vllm",
        MODEL,
        max_batch_size=32,
        dtype="float32",
        max_model_len=1024,
        min_new_tokens=REPLY,
    )
    t0 = time.perf_counter()
    await asyncio.to_thread(backend.start)  # compiled (vLLM's default) + the self-check
    out: dict[str, Any] = {
        "startup_s": round(time.perf_counter() - t0, 1),
        "mode": "compiled",
        "unsteered": {},
        "steered": {},
    }
    spec = bench_vectors(backend.facts)
    try:
        await sessions(backend, 4, 1)  # warm
        await sessions(backend, 4, 1, spec)
        for n in levels:
            out["unsteered"][str(n)] = await sessions(backend, n, turns)
        for n in steered_levels:
            out["steered"][str(n)] = await steered_vs_unsteered(backend, n, turns, spec)
    finally:
        await asyncio.to_thread(backend.stop)
    return out


async def run_hf(levels: list[int], turns: int) -> dict[str, Any]:
    lm = load_model(MODEL, dtype="float32")
    lm.model.generation_config.min_new_tokens = REPLY
    backend = TransformersBackend(lm, max_batch_size=16)
    backend.start()
    out: dict[str, Any] = {}
    try:
        await sessions(backend, 2, 1)  # warm
        for n in levels:
            out[str(n)] = await sessions(backend, n, turns)
    finally:
        backend.stop()
    return out


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--levels", default="1,4,16,32")
    parser.add_argument("--steered-levels", default="16,32")
    parser.add_argument("--turns", type=int, default=2)
    args = parser.parse_args()
    quiet_logs()
    levels = [int(x) for x in args.levels.split(",")]
    steered_levels = [int(x) for x in args.steered_levels.split(",")]
    load_start = round(os.getloadavg()[0], 2)  # the CPU is shared: record how busy it was
    vllm = asyncio.run(run_vllm(levels, args.turns, steered_levels))
    hf = asyncio.run(run_hf(levels, args.turns))
    result: dict[str, Any] = {
        "benchmark": "vllm_vs_transformers",
        "through": "GenerationBackend.submit (the Guard's seam)",
        "model": MODEL,
        "reply_tokens": REPLY,
        "turns_per_session": args.turns,
        "vllm": vllm,
        "transformers": hf,
    }
    summary: dict[str, Any] = {}
    for n in levels:
        v, h = vllm["unsteered"][str(n)], hf[str(n)]
        summary[str(n)] = {
            "first_token_p50_ratio_vllm_over_hf": ratio(
                v["first_token_ms"]["p50_ms"], h["first_token_ms"]["p50_ms"]
            ),
            "first_token_p95_ratio_vllm_over_hf": ratio(
                v["first_token_ms"]["p95_ms"], h["first_token_ms"]["p95_ms"]
            ),
            "throughput_ratio_vllm_over_hf": ratio(v["turns_per_s"], h["turns_per_s"]),
        }
    summary["steered_over_unsteered_compiled"] = {
        n: {"ratio": r["ratio"], "median_pair_ratio": r["median_pair_ratio"]}
        for n, r in vllm["steered"].items()
    }
    result["summary"] = summary
    result["machine"] = machine_info()
    result["load_average_1m"] = {"start": load_start, "end": round(os.getloadavg()[0], 2)}
    emit(result, args.out)


if __name__ == "__main__":
    main()
