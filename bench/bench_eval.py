"""Evaluation throughput: turns/s with 16 turns in flight vs one at a time, same run.

What ``sarsteer-guard eval`` does per run, minus model loading and judging: both arms (no
steering, alpha 0.1) over the same clips through one Guard, into a fresh results file.
The two modes differ only in ``concurrency`` (16 vs 1); the Guard micro-batches what is
in flight, so the ratio is what batching buys an evaluation. Vectors are calibrated once
into a temporary store before timing. Modes are interleaved in a shuffled order each
round; the JSON reports medians.

Items: the shipped calibration clips ``--offset`` onwards (harmful and benign alike, so
no clip that calibrated the vectors is evaluated), ``--clips`` of each kind.

Run: .venv/bin/python bench/bench_eval.py [--model tiny] [--clips 16] [--rounds 3]
     [--max-new-tokens 64] [--out bench/results/eval.json]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, base_parser, emit, interleaved, machine_info, quiet_logs, ratio

CALIBRATION_CLIPS = 16


def _items(offset: int, count: int) -> list[Any]:
    from sarsteer_guard.defaults import DEFAULT_BENIGN, DEFAULT_HARMFUL
    from sarsteer_guard.evaluation.plan import EvalItem
    from sarsteer_guard.manifest import load_manifest

    out = []
    for kind, path in (("harmful", DEFAULT_HARMFUL), ("benign", DEFAULT_BENIGN)):
        for entry in load_manifest(path).items[offset : offset + count]:
            out.append(EvalItem(kind, entry))  # type: ignore[arg-type]
    return out


def _calibration(folder: Path) -> dict[str, str]:
    from sarsteer_guard.defaults import DEFAULT_BENIGN, DEFAULT_HARMFUL
    from sarsteer_guard.manifest import load_manifest, write_manifest

    paths = {}
    for kind, path in (("harmful", DEFAULT_HARMFUL), ("benign", DEFAULT_BENIGN)):
        target = folder / f"cal_{kind}.jsonl"
        write_manifest(target, load_manifest(path).items[:CALIBRATION_CLIPS])
        paths[kind] = str(target)
    return paths


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--clips", type=int, default=16, help="clips of each kind")
    parser.add_argument("--offset", type=int, default=CALIBRATION_CLIPS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    out = args.out or RESULTS_DIR / "eval.json"
    quiet_logs()
    from sarsteer_guard.evaluation.plan import CONTEXT_KEY, Arm, Setting, explicit_policy
    from sarsteer_guard.evaluation.results import ResultsFile
    from sarsteer_guard.evaluation.runner import Generation, RunOptions, generate
    from sarsteer_guard.models import load_model

    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    arms = [
        Arm("unsteered", {CONTEXT_KEY: "unsteered"}, Setting(0.0)),
        Arm("steered", {CONTEXT_KEY: "steered"}, Setting(0.1, 1.0, 10), expect_steering=True),
    ]
    policy = explicit_policy(arms, calibration=_calibration(work))
    items = _items(args.offset, args.clips)
    lm = load_model(args.model)
    turns = len(items) * len(arms)

    def run(concurrency: int) -> float:
        options = RunOptions(
            store=str(work / "store"),
            generation=Generation(max_new_tokens=args.max_new_tokens),
            concurrency=concurrency,
            progress=False,
        )
        results = ResultsFile(work / f"r{time.perf_counter_ns()}.jsonl", {"bench": concurrency})
        with results:
            started = time.perf_counter()
            asyncio.run(generate(lm, policy, arms, items, results, options))
            elapsed = time.perf_counter() - started
        if sum(1 for (a, i), r in results.turns.items() if r.get("error") is None) != turns:
            raise SystemExit("some turns failed; the measurement would be meaningless")
        return elapsed

    run(16)  # warm-up: calibrates the vectors into the store, loads kernels
    samples = interleaved(
        {"concurrent_16": lambda: run(16), "one_at_a_time": lambda: run(1)}, args.rounds
    )
    emit(_result(samples, turns, args), out)


def _result(samples: dict[str, list[Any]], turns: int, args: Any) -> dict[str, Any]:
    modes = {
        name: {
            "wall_s_median": round(statistics.median(values), 3),
            "turns_per_s_median": round(turns / statistics.median(values), 3),
            "wall_s": [round(v, 3) for v in values],
        }
        for name, values in samples.items()
    }
    return {
        "benchmark": "eval",
        "description": "eval generation turns/s: 16 turns in flight vs one at a time, same run",
        "machine": machine_info(),
        "config": {
            "model": args.model,
            "turns_per_round": turns,
            "arms": ["unsteered", "alpha 0.1, lambda 1, k 10"],
            "clips_per_kind": args.clips,
            "max_new_tokens": args.max_new_tokens,
            "rounds": args.rounds,
        },
        "modes": modes,
        "speedup_16_vs_1": ratio(
            modes["concurrent_16"]["turns_per_s_median"],
            modes["one_at_a_time"]["turns_per_s_median"],
        ),
    }


if __name__ == "__main__":
    main()
