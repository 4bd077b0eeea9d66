"""Speak the organism's requests: train / validation / held-out manifests per side.

Run from the repository root:  .venv/bin/python scripts/organism/make_data.py --out build/organism

Writes ``OUT/{split}/{harmful,benign}.jsonl`` with clips in ``OUT/{split}/audio/``, plus
``OUT/calibration/{harmful,benign}.jsonl`` (a subset of the TRAIN manifests, for computing
steering vectors on the training side), and ``OUT/text/{split}_{side}.txt`` (the prompt lists).
Reproducible from ``--seed``: the same espeak-ng and sox builds give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sarsteer_guard.manifest import load_manifest, write_manifest
from sarsteer_guard.organism.data import VOICES, build_requests
from sarsteer_guard.synth import SynthPlan, synthesize_manifest

#: Clips per prompt in each split (training hears each prompt in sixteen drawn voices and
#: conditions since attempt 23; rendering i of a prompt is the same at any count).
VARIANTS = {"train": 16, "validation": 1, "heldout": 1}
CALIBRATION_PER_SIDE = 64


#: Tape-speed factors (tempo, pitch and formants together) drawn per clip in every split.
SPEEDS = (0.95, 1.0, 1.05)


def plan_for(
    split: str,
    seed: int,
    variants: int | None = None,
    speeds: tuple[float, ...] = SPEEDS,
) -> SynthPlan:
    """Voices of the split; rates, pitches and channel conditions shared by all splits.

    ``speeds`` may be widened for training only (``--train-speeds``): a wider tape-speed
    range scales each voice's formants, like a longer or shorter vocal tract.
    """
    return SynthPlan(
        voices=VOICES[split],
        rates=(140, 155, 170, 185),
        pitches=(35, 45, 55, 65),
        speeds=speeds,
        telephone_share=0.2,
        noise_share=0.2,
        snr_db=(15.0, 20.0, 25.0),
        variants=VARIANTS[split] if variants is None else variants,
        seed=seed,
    )


def main(argv: list[str] | None = None) -> int:
    """Generate every split; print clip counts and seconds as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/organism"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--limit", type=int, default=None, help="prompts per split and side (smoke tests)"
    )
    parser.add_argument(
        "--train-variants",
        type=int,
        default=VARIANTS["train"],
        help="renderings per training prompt (validation and held-out keep one)",
    )
    parser.add_argument(
        "--train-speeds",
        type=_speeds,
        default=SPEEDS,
        help="tape-speed factors for training clips, comma-separated (validation and "
        "held-out keep 0.95,1,1.05)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    requests = build_requests(args.seed)
    (args.out / "text").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split in VOICES:
        for side, harmful in (("harmful", True), ("benign", False)):
            chosen = [r for r in requests if r.split == split and r.harmful == harmful]
            if args.limit is not None:
                chosen = chosen[:: max(1, len(chosen) // args.limit)][: args.limit]
            lines = [f"{r.text}\t{r.category}" for r in chosen]
            (args.out / "text" / f"{split}_{side}.txt").write_text("\n".join(lines) + "\n")
            seed = args.seed * 1000 + list(VOICES).index(split) * 10 + int(harmful)
            manifest, specs = synthesize_manifest(
                [r.prompt for r in chosen],
                args.out / split,
                side,
                plan_for(split, seed, args.train_variants, args.train_speeds)
                if split == "train"
                else plan_for(split, seed),
                progress=not args.no_progress,
            )
            voices = {spec.id: spec.voice for spec in specs}
            (args.out / split / f"{side}.voices.json").write_text(json.dumps(voices, indent=0))
            counts[f"{split}/{side}"] = len(specs)
            if split == "train":
                firsts = load_manifest(manifest).items[:: args.train_variants]
                step = max(1, len(firsts) // CALIBRATION_PER_SIDE)  # every category
                items = firsts[::step][:CALIBRATION_PER_SIDE]
                write_manifest(
                    args.out / "calibration" / f"{side}.jsonl",
                    items,
                    header=f"organism calibration ({side}): training-side clips, seed {args.seed}",
                )
    took = time.perf_counter() - started
    print(json.dumps({"clips": counts, "seconds": round(took, 1)}))
    return 0


def _speeds(text: str) -> tuple[float, ...]:
    try:
        speeds = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers like 0.9,1,1.1") from None
    if not speeds or not all(0.5 <= s <= 2.0 for s in speeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give speed factors between 0.5 and 2")
    return speeds


if __name__ == "__main__":
    sys.exit(main())
