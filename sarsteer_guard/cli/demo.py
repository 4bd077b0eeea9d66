"""``sarsteer-guard demo``: the whole method on the embedded defaults, in under a minute on a CPU.

It needs no GPU, no Redis and no downloads: the built-in ``tiny-planted`` model (Qwen2-Audio
architecture with constructed weights in which one known residual direction decides between
refusing and complying) is calibrated on the shipped spoken calibration set, then a few shipped
clips are answered with steering off and on through the Guard, with a policy, a vector store
and an audit log in a local folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

_DEMO_POLICY = """\
# Written by `sarsteer-guard demo`: the shipped defaults plus a rule that turns steering off,
# so the same clip can be answered both ways.
name: demo
version: "1"
model: "*"
calibration: {k: 10, lambda: 1.0}
defaults: {preset: balanced}
failure_mode: fail_closed
audit: {record: refused, keep_audio: false, retention_days: 183}
rules:
  - name: steering-off
    when: {steering: "off"}
    alpha: 0
"""


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    p = subparsers.add_parser(
        "demo",
        help="calibrate and steer the built-in model on the shipped data (no GPU, no downloads)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="tiny-planted", help="model to demonstrate on")
    p.add_argument("--out", type=Path, default=Path("sarsteer-demo"), help="working folder")
    p.add_argument("--clips", type=int, default=3, help="harmful and benign clips to answer")
    p.add_argument("--json", action="store_true", help="print one JSON object per clip")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Calibrate (or reuse the stored vectors), then answer clips unsteered and steered."""
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    import time

    from sarsteer_guard.audio import load_audio
    from sarsteer_guard.defaults import DEFAULT_BENIGN, DEFAULT_HARMFUL
    from sarsteer_guard.guard.core import Guard
    from sarsteer_guard.guard.events import Turn, TurnDecision
    from sarsteer_guard.manifest import load_manifest

    args.out.mkdir(parents=True, exist_ok=True)
    policy = args.out / "demo-policy.yaml"
    policy.write_text(_DEMO_POLICY)
    started = time.perf_counter()
    guard = Guard(
        args.model,
        policy,
        str(args.out / "vectors"),
        f"sqlite:///{(args.out / 'audit.db').resolve()}",
        watch_policy=False,
        progress=not args.json,
        max_new_tokens=24,
    )
    harmful = load_manifest(DEFAULT_HARMFUL).items[: args.clips]
    benign = load_manifest(DEFAULT_BENIGN).items[: args.clips]
    rows: list[dict[str, Any]] = []
    async with guard:
        loaded = time.perf_counter() - started
        for kind, items in (("harmful", harmful), ("benign", benign)):
            for item in items:
                if item.audio is None:  # the shipped set has audio on every line
                    continue
                clip = load_audio(item.audio, target_rate=16000)
                answers: dict[str, TurnDecision] = {}
                for label, context in (("off", {"steering": "off"}), ("on", {})):
                    turn = Turn(
                        audio=clip,
                        sample_format="float32",
                        session_id=f"demo-{item.id}",
                        context=context,
                        history=[],
                    )
                    async for event in guard.respond(turn):
                        if isinstance(event, TurnDecision):
                            answers[label] = event
                rows.append(
                    {
                        "clip": item.id,
                        "kind": kind,
                        "transcript": item.transcript,
                        "unsteered": answers["off"].text,
                        "steered": answers["on"].text,
                        "refused_unsteered": answers["off"].refused,
                        "refused_steered": answers["on"].refused,
                        "alpha": answers["on"].alpha,
                        "first_token_ms": answers["on"].timings.first_token_ms,
                    }
                )
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    _print_table(rows, model=args.model, seconds=loaded, out=args.out)
    return 0


def _print_table(rows: list[dict[str, Any]], *, model: str, seconds: float, out: Path) -> None:
    width = 34
    print(f"\nmodel {model}: loaded and calibrated in {seconds:.1f} s (vectors in {out}/vectors)")
    print(f"{'clip':<12} {'what was said':<{width}} {'alpha 0':<28} {'alpha 0.1 (SARSteer)':<28}")
    for row in rows:
        said = (row["transcript"] or "")[: width - 1]
        mark_off = " [refused]" if row["refused_unsteered"] else ""
        mark_on = " [refused]" if row["refused_steered"] else ""
        print(
            f"{row['clip']:<12} {said:<{width}} "
            f"{(row['unsteered'][:18] + mark_off):<28} {(row['steered'][:18] + mark_on):<28}"
        )
    refused = sum(r["refused_steered"] for r in rows)
    print(
        f"\n{refused}/{len(rows)} turns refused with steering, "
        f"{sum(r['refused_unsteered'] for r in rows)}/{len(rows)} without. "
        f"Refused turns are in the audit log: sarsteer-guard audit list --audit "
        f"sqlite:///{(out / 'audit.db').resolve()}"
    )
    print(
        "The planted model cannot tell harmful from benign speech: it shows the mechanism "
        "(calibrate -> project -> steer), not a safety evaluation. Use --model with a real "
        "audio LM on a GPU for that."
    )
