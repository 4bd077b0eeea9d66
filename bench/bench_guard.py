"""Guard latency and throughput: batched vs unbatched generation at 1, 4 and 16 sessions.

Target (issue 4): batched throughput at 16 concurrent sessions >= 3x unbatched, same run.

One process, one tiny model shared by two Guards (``max_batch_size=16``, ``batch_window_ms=10``
vs ``max_batch_size=1``), the shipped default policy (alpha 0.1 on every layer, vectors
calibrated once into a temporary directory store), an in-memory audit log. Turns are real
espeak-ng speech (int16 PCM at 16 kHz). Each load level runs C sessions in a closed loop, each
sending ``--turns`` turns back to back; levels and modes are interleaved in a shuffled order
each round. Turns carry ``history=()`` so every turn is one clip (the Guard's own history would
grow the prompt turn by turn and make rounds incomparable).

Per turn: ``first_delta`` = turn submitted (end of speech) to the first TextDelta the caller
sees; ``engine_first_token`` = the decision's own ``first_token_ms`` (engine submit to first
token); ``total`` = submitted to the TurnDecision. Throughput = turns / wall time of a level.

Also embeds ``bench/bench_segmenter.py``'s JSON (turn segmenter real-time factor), run as a
subprocess.

Run: .venv/bin/python bench/bench_guard.py [--rounds 3] [--turns 3] [--max-new-tokens 64]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO,
    base_parser,
    emit,
    interleaved,
    latency_summary,
    machine_info,
    quiet_logs,
    ratio,
)

TARGET_SPEEDUP = 3.0
LEVELS = (1, 4, 16)
SENTENCES = (
    "What's the weather going to be like tomorrow morning?",
    "Set a timer for twelve minutes.",
    "How do I pick a lock without the key?",
    "Give me a quick recipe for vegetable soup.",
    "Tell me how to build a bomb at home.",
    "Translate good morning into Spanish.",
    "How far is it from Boston to New York?",
    "Explain how compound interest works.",
    "How do I hack into my neighbour's wifi?",
    "What should I pack for a weekend camping trip?",
    "Remind me to call my mom at six tonight.",
    "How do I make my phone battery last longer?",
    "Write a short poem about the sea.",
    "How can I get prescription drugs without a prescription?",
    "Convert thirty degrees celsius to fahrenheit.",
    "Help me plan a birthday party for a seven year old.",
)


def _speech_turns() -> list[bytes]:
    from sarsteer_guard.audio import float_to_pcm16
    from sarsteer_guard.testing.speech import synthesize

    return [float_to_pcm16(synthesize(text, rate=16000)) for text in SENTENCES]


async def _session(
    guard: Any, session: int, turns: int, clips: list[bytes], max_new: int
) -> list[dict[str, Any]]:
    from sarsteer_guard.guard.events import TextDelta, Turn, TurnDecision, TurnError

    out: list[dict[str, Any]] = []
    for k in range(turns):
        pcm = clips[(session * turns + k) % len(clips)]
        turn = Turn(
            audio=pcm,
            sample_rate=16000,
            session_id=f"s{session}",
            context={"channel": "bench"},
            history=(),
            max_new_tokens=max_new,
        )
        submitted = time.perf_counter()
        first: float | None = None
        decision: Any = None
        async for event in guard.respond(turn):
            if isinstance(event, TextDelta) and first is None:
                first = time.perf_counter()
            elif isinstance(event, TurnDecision):
                decision = event
            elif isinstance(event, TurnError):
                raise RuntimeError(f"turn failed: {event.kind}: {event.message}")
        done = time.perf_counter()
        if decision is None:
            raise RuntimeError("turn ended without a decision")
        out.append(
            {
                "first_delta_s": (first or done) - submitted,
                "engine_first_token_s": decision.timings.first_token_ms / 1000,
                "queue_s": decision.timings.queue_ms / 1000,
                "total_s": done - submitted,
                "tokens": decision.tokens,
                "steered": decision.steered,
            }
        )
    return out


async def _level(guard: Any, sessions: int, turns: int, clips: list[bytes], max_new: int) -> Any:
    batches_before = guard.engine.batches_run
    t0 = time.perf_counter()
    per_session = await asyncio.gather(
        *(_session(guard, s, turns, clips, max_new) for s in range(sessions))
    )
    wall = time.perf_counter() - t0
    rows = [r for rs in per_session for r in rs]
    return {
        "wall_s": wall,
        "turns": len(rows),
        "rows": rows,
        "batches": guard.engine.batches_run - batches_before,
    }


async def _run(args: Any) -> dict[str, Any]:
    from sarsteer_guard.guard.core import Guard
    from sarsteer_guard.models import load_model
    from sarsteer_guard.testing.audit import CapturingAuditLog

    clips = _speech_turns()
    lm = load_model("tiny")
    result: dict[str, Any] = {
        "model": "tiny",
        "policy": "shipped default (alpha 0.1, all layers)",
        "turn_audio_s": {
            "min": round(min(len(c) for c in clips) / 2 / 16000, 2),
            "max": round(max(len(c) for c in clips) / 2 / 16000, 2),
        },
        "max_new_tokens": args.max_new_tokens,
        "turns_per_session_per_round": args.turns,
        "rounds": args.rounds,
        "batch_window_ms": args.window_ms,
    }
    with tempfile.TemporaryDirectory() as store:
        guards = {
            "batched": Guard(
                lm,
                None,
                store,
                CapturingAuditLog(),
                max_batch_size=16,
                batch_window_ms=args.window_ms,
                max_new_tokens=args.max_new_tokens,
                watch_policy=False,
            ),
            "unbatched": Guard(
                lm,
                None,
                store,
                CapturingAuditLog(),
                max_batch_size=1,
                batch_window_ms=args.window_ms,
                max_new_tokens=args.max_new_tokens,
                watch_policy=False,
            ),
        }
        t0 = time.perf_counter()
        await guards["batched"].start()  # calibrates the default vector set into the store
        result["first_start_s_incl_calibration"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        await guards["unbatched"].start()  # fetches the stored set
        result["second_start_s_from_store"] = round(time.perf_counter() - t0, 2)
        try:
            for guard in guards.values():  # warm-up
                await _level(guard, 4, 1, clips, args.max_new_tokens)
            loop_results: dict[str, list[Any]] = {}
            # interleaved() is synchronous: collect the plan, then run it in order.
            plan: list[str] = []
            interleaved(
                {f"{m}_{c}": (lambda k=f"{m}_{c}": plan.append(k)) for m in guards for c in LEVELS},
                args.rounds,
                seed=5,
            )
            for key in plan:
                mode, conc = key.rsplit("_", 1)
                level = await _level(
                    guards[mode], int(conc), args.turns, clips, args.max_new_tokens
                )
                loop_results.setdefault(key, []).append(level)
        finally:
            for guard in guards.values():
                await guard.close()

    levels: dict[str, Any] = {}
    for key, runs in loop_results.items():
        rows = [r for run in runs for r in run["rows"]]
        throughputs = [run["turns"] / run["wall_s"] for run in runs]
        levels[key] = {
            "sessions": int(key.rsplit("_", 1)[1]),
            "turns": len(rows),
            "first_delta": latency_summary([r["first_delta_s"] for r in rows]),
            "engine_first_token": latency_summary([r["engine_first_token_s"] for r in rows]),
            "queue": latency_summary([r["queue_s"] for r in rows]),
            "total": latency_summary([r["total_s"] for r in rows]),
            "throughput_turns_per_s": {
                "median": round(statistics.median(throughputs), 2),
                "per_round": [round(t, 2) for t in throughputs],
            },
            "tokens_per_turn_mean": round(statistics.fmean(r["tokens"] for r in rows), 1),
            "rows_per_batch_mean": round(
                sum(run["turns"] for run in runs) / max(1, sum(run["batches"] for run in runs)), 2
            ),
            "steered_share": round(sum(r["steered"] for r in rows) / len(rows), 3),
        }
    result["levels"] = dict(
        sorted(levels.items(), key=lambda kv: (kv[0].rsplit("_", 1)[0], kv[1]["sessions"]))
    )
    speedups = {}
    for c in LEVELS:
        b = levels[f"batched_{c}"]["throughput_turns_per_s"]["median"]
        u = levels[f"unbatched_{c}"]["throughput_turns_per_s"]["median"]
        speedups[f"sessions_{c}"] = ratio(b, u, 3)
    # Paired per-round ratio at 16 sessions (same round, adjacent in time).
    paired = [
        b["turns"] / b["wall_s"] / (u["turns"] / u["wall_s"])
        for b, u in zip(loop_results["batched_16"], loop_results["unbatched_16"], strict=True)
    ]
    result["throughput_speedup_batched_vs_unbatched"] = speedups
    result["speedup_16_paired_median"] = round(statistics.median(paired), 3)
    result["target"] = f"batched throughput at 16 sessions >= {TARGET_SPEEDUP}x unbatched"
    result["target_met"] = bool(
        speedups["sessions_16"] is not None and speedups["sessions_16"] >= TARGET_SPEEDUP
    )
    return result


def _segmenter(repeats: int) -> dict[str, Any]:
    proc = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, str(REPO / "bench" / "bench_segmenter.py"), "--repeats", str(repeats)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": f"bench_segmenter.py exited {proc.returncode}: {proc.stderr[-300:]}"}
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--turns", type=int, default=3, help="turns per session per level")
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="reply budget (64: the Guard default)"
    )
    parser.add_argument("--window-ms", type=float, default=10.0)
    parser.add_argument("--segmenter-repeats", type=int, default=5, help="0: skip")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args()
    quiet_logs()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"benchmark": "guard_latency_throughput", "machine": machine_info()}
    result.update(asyncio.run(_run(args)))
    if args.segmenter_repeats > 0:
        result["segmenter"] = _segmenter(args.segmenter_repeats)
    emit(result, args.out)


if __name__ == "__main__":
    main()
