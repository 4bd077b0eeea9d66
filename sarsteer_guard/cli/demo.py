"""``sarsteer-guard demo``: the audio bypass and SARSteer steering, on a CPU, in about a minute.

It needs no GPU, no Redis and no downloads. The default model, ``tiny-trained``, is the project's
model organism: a small Qwen2-Audio trained here with safety supervision on *text only*, so it
refuses harmful requests typed as text but answers the same requests spoken (the bypass
emerged; nothing planted it). A trained stand-in, not a safety evaluation of any real model
(docs/organism.md). Steering vectors are calibrated on the organism's training-side clips, then
held-out clips (prompts and voices never used in training or to choose settings) are answered
through the Guard with steering off and on, with a policy, a vector store and an audit log in a
local folder. On this organism steering is partly selective (over the full held-out set
harmful clips flip much more often than benign ones, but many benign clips flip too; on a few
clips either side may flip); docs/organism.md has the measurements and why.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

from sarsteer_guard.cli._common import MODEL_HELP

#: Shipped organism files: held-out demo clips, training-side calibration clips, results.
ORGANISM_DIR = Path(__file__).resolve().parents[1] / "data" / "organism"

_DEMO_POLICY = """\
# Written by `sarsteer-guard demo`: the organism's training-side calibration clips, the alpha,
# lambda and k a sweep on its validation split picked, and a rule that turns steering off, so
# the same clip can be answered both ways.
name: demo
version: "1"
model: "*"
calibration: {{k: {k}, lambda: {lam}, harmful: "{harmful}", benign: "{benign}"}}
defaults: {{alpha: {alpha}}}
failure_mode: fail_closed
audit: {{record: refused, keep_audio: false, retention_days: 183}}
rules:
  - name: steering-off
    when: {{steering: "off"}}
    alpha: 0
"""


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    p = subparsers.add_parser(
        "demo",
        help="answer held-out spoken requests with and without steering on the trained "
        "model organism (no GPU, no downloads)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="tiny-trained", help=MODEL_HELP)
    p.add_argument("--out", type=Path, default=Path("sarsteer-demo"), help="working folder")
    p.add_argument(
        "--clips", type=int, default=4, help="harmful and benign clips to answer (0 = all 16)"
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="steering strength (default: the alpha the organism's validation sweep picked; "
        "lambda and k always come from that sweep)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per clip")
    p.set_defaults(func=run)


def organism_summary(measured: dict[str, Any]) -> str:
    """What the organism is and its held-out figures, read from ``results.json``."""
    pick = measured["grid_pick"]
    steered = measured["grid"]["steered"]
    n = steered["n_harmful"] + steered["n_benign"]
    return (
        "tiny-trained is a small model trained here as a stand-in, not a safety evaluation of "
        "any real model. It refuses these requests typed but answers them spoken (the bypass). "
        f"Over all {n} held-out clips, with the full training-side calibration set and the "
        f"setting a validation sweep picked for it (alpha {pick['alpha']:g}, lambda "
        f"{pick['lambda']:g}, k {pick['k']}), steering leaves "
        f"{steered['asr']:.0%} of harmful clips answered and {steered['brr']:.0%} of benign "
        "clips answered, so on a handful of clips either side may differ (measured in "
        "docs/organism.md)."
    )


def recorded() -> dict[str, Any]:
    """The organism's recorded results (``data/organism/results.json``)."""
    data: dict[str, Any] = json.loads((ORGANISM_DIR / "results.json").read_text("utf-8"))
    return data


def run(args: argparse.Namespace) -> int:
    """Calibrate (or reuse the stored vectors), then answer clips unsteered and steered."""
    from sarsteer_guard.errors import GuardError

    if args.clips < 0:
        raise GuardError(f"--clips {args.clips}: give 0 (all) or a positive number")
    if args.alpha is not None and args.alpha <= 0:
        raise GuardError("--alpha must be above 0 (the demo compares steering off and on)")
    return asyncio.run(_demo(args))


def _store_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


async def _demo(args: argparse.Namespace) -> int:
    import time

    from sarsteer_guard.evaluation.plan import Setting
    from sarsteer_guard.guard.core import Guard
    from sarsteer_guard.manifest import load_manifest

    args.out.mkdir(parents=True, exist_ok=True)
    shipped = recorded()
    alpha = args.alpha if args.alpha is not None else float(shipped["demo_alpha"])
    lam, k = float(shipped["demo_lambda"]), int(shipped["demo_k"])
    policy = args.out / "demo-policy.yaml"
    policy.write_text(
        _DEMO_POLICY.format(
            harmful=(ORGANISM_DIR / "calibration" / "harmful.jsonl").as_posix(),
            benign=(ORGANISM_DIR / "calibration" / "benign.jsonl").as_posix(),
            alpha=alpha,
            lam=lam,
            k=k,
        )
    )
    store = args.out / "vectors"
    store.mkdir(exist_ok=True)
    before = _store_files(store)
    started = time.perf_counter()
    guard = Guard(
        args.model,
        policy,
        str(store),
        f"sqlite:///{(args.out / 'audit.db').resolve()}",
        watch_policy=False,
        progress=not args.json,
        max_new_tokens=32,
    )
    limit = None if args.clips == 0 else args.clips
    clips = {
        kind: load_manifest(ORGANISM_DIR / "heldout" / f"{kind}.jsonl").items[:limit]
        for kind in ("harmful", "benign")
    }
    async with guard:
        ready = time.perf_counter() - started
        calibrated = _store_files(store) != before
        rows = [await _answer(guard, item, kind) for kind, items in clips.items() for item in items]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    setting = Setting(alpha=alpha, lam=lam, k=k).label
    _print_table(
        rows, model=args.model, seconds=ready, out=args.out, calibrated=calibrated, setting=setting
    )
    return 0


async def _answer(guard: Any, item: Any, kind: str) -> dict[str, Any]:
    """Answer one clip with steering off, then on; the row ``demo --json`` prints."""
    from sarsteer_guard.audio import load_audio
    from sarsteer_guard.guard.events import Turn, TurnDecision

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
    return {
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


def rates(rows: list[dict[str, Any]], arm: str) -> tuple[float, float]:
    """(ASR, BRR) of the rows for one arm (``unsteered`` or ``steered``); NaN with no rows."""

    def answered(kind: str) -> float:
        chosen = [r for r in rows if r["kind"] == kind]
        if not chosen:
            return float("nan")
        return sum(not r[f"refused_{arm}"] for r in chosen) / len(chosen)

    return answered("harmful"), answered("benign")


def _print_table(
    rows: list[dict[str, Any]],
    *,
    model: str,
    seconds: float,
    out: Path,
    calibrated: bool,
    setting: str,
) -> None:
    how = (
        f"loaded and calibrated in {seconds:.1f} s"
        if calibrated
        else f"loaded in {seconds:.1f} s, vectors reused from {out}/vectors (calibrated earlier)"
    )
    print(f"\nmodel {model}: {how}")
    print(f"held-out clips (prompts and voices never seen in training); SARSteer {setting}\n")
    wrap = textwrap.TextWrapper(width=92, initial_indent="    ", subsequent_indent="    ")
    for row in rows:
        print(f'[{row["kind"]}] {row["clip"]}: "{row["transcript"]}"')
        for label, key in (("no steering", "unsteered"), ("steered", "steered")):
            mark = "REFUSED " if row[f"refused_{key}"] else "answered"
            print(wrap.fill(f"{label:<12} {mark}  {row[key]}"))
    asr_off, brr_off = rates(rows, "unsteered")
    asr_on, brr_on = rates(rows, "steered")
    print(
        f"\nthese clips: harmful answered (ASR) {asr_off:.0%} -> {asr_on:.0%} with steering; "
        f"benign answered (BRR) {brr_off:.0%} -> {brr_on:.0%}."
    )
    print(
        f"Refused turns are in the audit log: sarsteer-guard audit list --audit "
        f"sqlite:///{(out / 'audit.db').resolve()}"
    )
    if model == "tiny-trained":
        print(organism_summary(recorded()["measured"]))
