"""The house refactor against a baseline commit: CLI startup and `policy explain`, side by side.

Checks out ``--baseline`` (default ``04750cf``, the last commit before the refactor) into a
temporary git worktree and times the same commands from both trees in one run, interleaved in
a shuffled order each round (so machine noise hits both alike), then reports medians and the
ratio current / baseline. Each process imports the package from its own tree (``PYTHONPATH``;
the import path is checked before timing).

    .venv/bin/python bench/bench_house_compare.py [--baseline 04750cf] [--runs 15] \
        [--out bench/results/house_compare.json]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, base_parser, emit, interleaved, machine_info, ratio

POLICY = "policies/kids-channel.yaml"

#: Command name -> argv after ``python``. Every one exists in both trees.
COMMANDS: dict[str, list[str]] = {
    "python -m sarsteer_guard --help": ["-m", "sarsteer_guard", "--help"],
    "policy explain (CLI, fresh process)": [
        "-m",
        "sarsteer_guard",
        "policy",
        "explain",
        POLICY,
        "--context",
        "channel=kids",
        "--context",
        "age=9",
    ],
}

#: Per-call ``Policy.explain`` in-process (microseconds per call, median of batches).
EXPLAIN_PER_CALL = f"""
import statistics, time
from sarsteer_guard.policy import load_policy
policy = load_policy({POLICY!r})
ctx = {{"channel": "web", "user_tier": "pro", "locale": "en-GB", "age": 30}}
samples = []
for _ in range(60):
    start = time.perf_counter_ns()
    for _ in range(200):
        policy.explain(ctx)
    samples.append((time.perf_counter_ns() - start) / 200 / 1000)
print(statistics.median(samples))
"""


def _runner(tree: Path, argv: list[str]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        subprocess.run(  # noqa: S603 -- fixed argv
            [sys.executable, *argv],
            check=True,
            capture_output=True,
            cwd=tree,
            env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        )
        return (time.perf_counter() - start) * 1000

    return run


def _per_call(tree: Path) -> Callable[[], float]:
    def run() -> float:
        out = subprocess.run(  # noqa: S603 -- fixed argv
            [sys.executable, "-c", EXPLAIN_PER_CALL],
            check=True,
            capture_output=True,
            text=True,
            cwd=tree,
            env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        )
        return float(out.stdout.strip())

    return run


def _imports_from(tree: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import sarsteer_guard; print(sarsteer_guard.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )
    path = out.stdout.strip()
    if not path.startswith(str(tree)):
        raise SystemExit(f"{tree} imports sarsteer_guard from {path}: fix PYTHONPATH first")
    return path


def compare(baseline: Path, runs: int) -> dict[str, Any]:
    """Medians (ms, or us per call) per tree and the current / baseline ratio per measure."""
    trees = {"baseline": baseline, "current": REPO}
    for tree in trees.values():
        _imports_from(tree)
    cases: dict[str, Callable[[], float]] = {}
    for name, argv in COMMANDS.items():
        for label, tree in trees.items():
            cases[f"{name}|{label}"] = _runner(tree, argv)
    for label, tree in trees.items():
        cases[f"Policy.explain per call (us, in-process)|{label}"] = _per_call(tree)
    samples = interleaved(cases, runs)
    out: dict[str, Any] = {}
    for name in [*COMMANDS, "Policy.explain per call (us, in-process)"]:
        old = statistics.median(samples[f"{name}|baseline"])
        new = statistics.median(samples[f"{name}|current"])
        out[name] = {
            "baseline_median": round(old, 2),
            "current_median": round(new, 2),
            "ratio_current_over_baseline": ratio(new, old, 3),
            "baseline_runs": [round(x, 2) for x in samples[f"{name}|baseline"]],
            "current_runs": [round(x, 2) for x in samples[f"{name}|current"]],
        }
    return out


def main() -> None:
    """Check out the baseline, time both trees interleaved, print (and write) the JSON."""
    parser = base_parser(__doc__)
    parser.add_argument("--baseline", default="04750cf", help="git ref to compare against")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="house-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(  # noqa: S603 -- fixed argv
            ["git", "worktree", "add", "--detach", str(tree), args.baseline],  # noqa: S607
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        try:
            result = {
                "bench": "house_compare",
                "baseline": args.baseline,
                "runs": args.runs,
                "machine": machine_info(),
                "measures": compare(tree, args.runs),
            }
        finally:
            subprocess.run(  # noqa: S603 -- fixed argv
                ["git", "worktree", "remove", "--force", str(tree)],  # noqa: S607
                cwd=REPO,
                check=False,
                capture_output=True,
            )
    emit(result, args.out)


if __name__ == "__main__":
    main()
