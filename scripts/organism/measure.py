"""Measure the organism with the shipped pipeline: sweep on validation, eval on held-out.

Run from the repository root after make_data.py and train.py:
    OMP_NUM_THREADS=1 .venv/bin/python scripts/organism/measure.py --model build/organism/model

Steps (every one through the ``sarsteer-guard`` CLI, vectors from the TRAINING-side calibration
manifests ``DATA/calibration/*.jsonl``):

1. ``sweep`` over alpha on the VALIDATION split (lambda 1, k 10): two picks, the sweep's
   recommendation (most benign answered among settings at most 5% harmful answered; if none
   meets it, the widest gap below) and the alpha with the widest gap, BRR - ASR; the held-out
   split plays no part in either choice;
2. ``sweep`` on VALIDATION over a coarser alpha x lambda x k grid (one sweep per k): the
   setting with the widest gap over this grid and step 1's (since attempt 29; attempts
   before it chose alpha alone, at lambda 1 and k 10);
3. ``eval`` on the HELD-OUT split at the reference defaults (alpha 0.1, lambda 1, k 10);
4. ``eval`` on held-out at each pick, as picked and with lambda 0 (no ablation);
5. text sanity: held-out harmful and benign prompts typed as text, no audio, unsteered.

``--validation-only --calibration DIR`` stops after steps 1-2 with other calibration clips:
that is how the demo's setting is picked for the 16 + 16 clips it ships with.

Writes ``OUT/results.json`` (every figure with its 95% Wilson interval) and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from sarsteer_guard.cli import main as cli
from sarsteer_guard.evaluation.metrics import wilson_interval
from sarsteer_guard.evaluation.plan import Setting

#: Finer where the organisms' refusal windows lie (0.18-0.25 for attempt 9, 0.3-0.5 since
#: attempt 16, with lambda 1).
ALPHAS = (
    "0.05,0.1,0.15,0.18,0.2,0.21,0.22,0.23,0.24,0.25,0.28,0.3,0.32,0.34,0.36,0.38,"
    "0.4,0.42,0.44,0.46,0.48,0.5,0.55,0.6,0.7,1.0"
)
#: Step 2's grid: coarser in alpha, so one sweep per k stays a few minutes.
GRID_ALPHAS = "0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5"
GRID_LAMBDAS = "0.5,1"
GRID_KS = "3,5,10,20"


def _run_json(argv: list[str]) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli(argv)
    if code != 0:
        raise SystemExit(f"sarsteer-guard {' '.join(argv[:1])} failed with exit {code}")
    data: dict[str, Any] = json.loads(out.getvalue())
    return data


def _common(args: argparse.Namespace, split: str) -> list[str]:
    cal = args.calibration or args.data / "calibration"
    return [
        "--model",
        str(args.model),
        "--harmful",
        str(args.data / split / "harmful.jsonl"),
        "--benign",
        str(args.data / split / "benign.jsonl"),
        "--calibration-harmful",
        str(cal / "harmful.jsonl"),
        "--calibration-benign",
        str(cal / "benign.jsonl"),
        "--store",
        str(args.out / "store"),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--concurrency",
        "8",
        "--json",
        "--no-progress",
    ]


def _arm(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        key: summary[key]
        for key in ("asr", "brr", "n_harmful", "n_benign", "asr_detail", "brr_detail")
    }


def text_sanity(model: str, data: Path) -> dict[str, Any]:
    """Held-out prompts as typed text (no audio), unsteered: refusal rate per side."""
    from sarsteer_guard.models import load_model
    from sarsteer_guard.models.base import Message
    from sarsteer_guard.refusal import RefusalDetector

    lm = load_model(model, device="cpu")
    detect = RefusalDetector()
    out: dict[str, Any] = {}
    for side in ("harmful", "benign"):
        lines = (data / "text" / f"heldout_{side}.txt").read_text().splitlines()
        texts = [line.split("\t")[0] for line in lines if line]
        refused = 0
        for start in range(0, len(texts), 16):
            batch = [[Message(role="user", text=t)] for t in texts[start : start + 16]]
            ids = lm.generate(lm.encode(batch), max_new_tokens=24)
            refused += sum(detect(text).refused for text in lm.decode_batch(ids))
        low, high = wilson_interval(refused, len(texts))
        out[side] = {
            "refused": refused,
            "n": len(texts),
            "rate": refused / len(texts),
            "ci95": [round(low, 4), round(high, 4)],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every step; write results.json; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, default=Path("build/organism"))
    parser.add_argument("--out", type=Path, default=Path("build/organism/measure"))
    parser.add_argument("--alphas", default=ALPHAS)
    parser.add_argument("--grid-alphas", default=GRID_ALPHAS)
    parser.add_argument("--grid-lambdas", default=GRID_LAMBDAS)
    parser.add_argument("--grid-ks", default=GRID_KS, help="comma-separated; empty skips step 2")
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="folder of {harmful,benign}.jsonl calibration manifests (default DATA/calibration)",
    )
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="stop after the picks (steps 1-2): how the demo's setting is chosen for its own "
        "calibration clips",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"model": args.model, "max_new_tokens": args.max_new_tokens}
    started = time.perf_counter()
    sweep = _run_json(
        [
            "sweep",
            *_common(args, "validation"),
            "--alpha",
            args.alphas,
            "--lambda",
            "1",
            "--k",
            "10",
            "--out",
            str(args.out / "sweep"),
        ]
    )
    results["sweep"] = sweep
    steered = [row for row in sweep["settings"] if float(row["alpha"]) > 0]
    widest = max(steered, key=_gap_key)
    chosen = sweep["recommended"]
    if chosen is None or float(chosen["alpha"]) == 0:
        chosen = widest
    picked, gap = float(chosen["alpha"]), float(widest["alpha"])
    results["picked_alpha"], results["gap_alpha"] = picked, gap
    print(f"validation sweep: recommended alpha {picked:g}, widest gap {gap:g}", file=sys.stderr)
    picks = {"default": 0.1, "picked": picked, "gap": gap}
    runs = {}
    for name, alpha in picks.items():  # each pick at the paper's lambda and k, and lambda 0
        runs[name] = _setting_argv({"alpha": alpha, "lambda": 1.0, "k": 10})
        runs[f"{name}_lambda0"] = _setting_argv({"alpha": alpha, "lambda": 0.0, "k": 10})
    if args.grid_ks:
        grid = grid_sweep(args, steered)
        results["grid_sweep"], results["grid_pick"] = grid["settings"], grid["pick"]
        best = grid["pick"]
        print(f"validation grid: widest gap at {_setting(best)}", file=sys.stderr)
        runs["grid"] = _setting_argv(best)
        runs["grid_lambda0"] = _setting_argv({**best, "lambda": 0.0})
    if args.validation_only:
        results["seconds"] = round(time.perf_counter() - started, 1)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        return 0
    for name, extra in runs.items():
        summary = _run_json(
            ["eval", *_common(args, "heldout"), *extra, "--out", str(args.out / f"heldout-{name}")]
        )
        results[name] = {
            "unsteered": _arm(summary["unsteered"]),
            "steered": _arm(summary["steered"]),
        }
        print(f"held-out {name}: done", file=sys.stderr)
    results["text"] = text_sanity(str(args.model), args.data)
    results["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


def _gap_key(row: dict[str, Any]) -> tuple[float, float]:
    """Widest gap first (benign answered minus harmful answered), then lowest attack success.

    Rounded, so equal gaps made of different counts (41/70 as 61-20 or 62-21) tie exactly and
    the lower attack success decides.
    """
    return (round(row["brr"]["rate"] - row["asr"]["rate"], 6), -row["asr"]["rate"])


def grid_sweep(args: argparse.Namespace, alpha_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Step 2: one validation sweep per k over the alpha x lambda grid; the widest gap.

    ``alpha_rows`` (step 1's steered settings) take part in the choice, so the grid can only
    widen the gap the alpha sweep found. Every setting is one full pass over validation; every
    sweep also runs the reference defaults, kept once.
    """
    rows = list(alpha_rows)
    for k in args.grid_ks.split(","):
        sweep = _run_json(
            [
                "sweep",
                *_common(args, "validation"),
                "--alpha",
                args.grid_alphas,
                "--lambda",
                args.grid_lambdas,
                "--k",
                k,
                "--out",
                str(args.out / f"grid-k{k}"),
            ]
        )
        seen = {(row["alpha"], row["lambda"], row["k"]) for row in rows}
        rows += [
            row
            for row in sweep["settings"]
            if float(row["alpha"]) > 0 and (row["alpha"], row["lambda"], row["k"]) not in seen
        ]
    best = max(rows, key=_gap_key)
    pick = {
        "alpha": float(best["alpha"]),
        "lambda": float(best["lambda"]),
        "k": int(best["k"]),
        "validation_asr": best["asr"]["rate"],
        "validation_brr": best["brr"]["rate"],
    }
    return {"settings": rows, "pick": pick}


def _setting(pick: dict[str, Any]) -> str:
    return Setting(alpha=pick["alpha"], lam=pick["lambda"], k=pick["k"]).label


def _setting_argv(pick: dict[str, Any]) -> list[str]:
    return [
        "--alpha",
        f"{pick['alpha']:g}",
        "--lambda",
        f"{pick['lambda']:g}",
        "--k",
        str(pick["k"]),
    ]


def _fmt(detail: dict[str, Any]) -> str:
    low, high = detail["ci95"]
    return f"{detail['rate']:.1%} [{low:.1%}, {high:.1%}] ({detail['answered']}/{detail['n']})"


def table(results: dict[str, Any]) -> str:
    """Markdown table of ASR and BRR per configuration (held-out split)."""
    picked = results["picked_alpha"]
    rows = [
        ("no steering", results["default"]["unsteered"]),
        ("SARSteer alpha 0.1, lambda 1, k 10 (defaults)", results["default"]["steered"]),
        ("alpha 0.1, lambda 0 (no ablation)", results["default_lambda0"]["steered"]),
        (
            f"SARSteer alpha {picked:g} (validation sweep's recommendation), lambda 1, k 10",
            results["picked"]["steered"],
        ),
        (f"alpha {picked:g}, lambda 0 (no ablation)", results["picked_lambda0"]["steered"]),
        (
            f"SARSteer alpha {results['gap_alpha']:g} (validation's widest BRR-ASR gap), "
            "lambda 1, k 10",
            results["gap"]["steered"],
        ),
        (
            f"alpha {results['gap_alpha']:g}, lambda 0 (no ablation)",
            results["gap_lambda0"]["steered"],
        ),
    ]
    if "grid_pick" in results:
        best = results["grid_pick"]
        rows += [
            (
                f"SARSteer {_setting(best)} (validation grid's widest gap)",
                results["grid"]["steered"],
            ),
            (
                f"alpha {best['alpha']:g}, lambda 0 (no ablation)",
                results["grid_lambda0"]["steered"],
            ),
        ]
    lines = [
        "| held-out speech | ASR (harmful answered) | BRR (benign answered) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {_fmt(arm['asr_detail'])} | {_fmt(arm['brr_detail'])} |" for name, arm in rows
    ]
    text = results["text"]
    lines.append(
        f"| text sanity (no audio, no steering): harmful refused "
        f"{text['harmful']['rate']:.1%} ({text['harmful']['refused']}/{text['harmful']['n']}), "
        f"benign refused {text['benign']['rate']:.1%} | | |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
