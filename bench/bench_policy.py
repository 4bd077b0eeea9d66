"""Policy speed: evaluate/explain latency per call, load time, and `policy explain` wall time.

Prints one JSON object. Per-call numbers are medians over batches (a batch is timed as
a whole, so timer overhead is amortised); CLI numbers are medians of fresh processes.

    .venv/bin/python bench/bench_policy.py [--policy policies/kids-channel.yaml] [--cli-runs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sarsteer_guard.policy import load_policy  # noqa: E402 -- after the path tweak

# Contexts for the kids-channel policy: first rule, a later rule, and no rule (defaults:
# every condition is checked, the worst case).
CONTEXTS: dict[str, dict[str, Any]] = {
    "first_rule": {"channel": "kids", "age": 9},
    "third_rule": {"channel": "kids", "age": 15},
    "no_match": {"channel": "web", "user_tier": "pro", "locale": "en-GB", "age": 30},
}


def per_call_us(fn: Callable[[], object], *, batch: int, batches: int) -> dict[str, float]:
    samples = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter_ns() - start) / batch / 1000)
    samples.sort()
    return {
        "median_us": round(statistics.median(samples), 3),
        "p10_us": round(samples[len(samples) // 10], 3),
        "p90_us": round(samples[(len(samples) * 9) // 10], 3),
        "calls": batch * batches,
    }


def cli_wall(policy: Path, runs: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "sarsteer_guard",
        "policy",
        "explain",
        str(policy),
        "--context",
        "channel=kids",
        "--context",
        "age=9",
    ]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)  # noqa: S603 -- fixed argv
        times.append(time.perf_counter() - start)
    return {
        "command": " ".join(["python", *cmd[1:]]),
        "median_ms": round(statistics.median(times) * 1000, 1),
        "min_ms": round(min(times) * 1000, 1),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", type=Path, default=ROOT / "policies" / "kids-channel.yaml")
    parser.add_argument("--cli-runs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()

    policy = load_policy(args.policy)
    result: dict[str, Any] = {
        "bench": "policy",
        "policy": policy.ref,
        "rules": len(policy.rules),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "evaluate": {},
        "explain": {},
    }
    for name, context in CONTEXTS.items():
        result["evaluate"][name] = {
            "rule": policy.evaluate(context).rule,
            **per_call_us(
                lambda c=context: policy.evaluate(c),  # type: ignore[misc]  # default-bound
                batch=args.batch,
                batches=args.batches,
            ),
        }
        result["explain"][name] = per_call_us(
            lambda c=context: policy.explain(c),  # type: ignore[misc]  # default-bound
            batch=max(1, args.batch // 10),
            batches=args.batches,
        )
    result["load_policy"] = per_call_us(lambda: load_policy(args.policy), batch=5, batches=20)
    result["cli_explain"] = cli_wall(args.policy, args.cli_runs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
