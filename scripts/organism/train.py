"""Train the model organism and write it in the hub's weight layout.

Run from the repository root, after make_data.py:
    .venv/bin/python scripts/organism/train.py --data build/organism --out build/organism/model

Then copy the directory into sarsteer_guard/data/organism/tiny-trained to ship it (the
``--ship`` flag does that). Prints one JSON line per logged step and a final summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from sarsteer_guard.organism.train import TrainConfig, save_checkpoint, train

SHIPPED = (
    Path(__file__).resolve().parents[2] / "sarsteer_guard" / "data" / "organism" / "tiny-trained"
)


def main(argv: list[str] | None = None) -> int:
    """Train with the given settings; write the checkpoint (and ship it with --ship)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("build/organism"))
    parser.add_argument("--out", type=Path, default=Path("build/organism/model"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--aux-weight", type=float, default=1.0)
    parser.add_argument("--mix", type=json.loads, default=None, help="task weights as JSON")
    parser.add_argument("--pretrain-steps", type=int, default=0)
    parser.add_argument(
        "--align-weight", type=float, default=0.0, help="speech-text alignment loss weight"
    )
    parser.add_argument(
        "--spec-augment", action="store_true", help="mel shift + SpecAugment masks on audio"
    )
    parser.add_argument("--audio-width", type=int, default=64, help="audio encoder width")
    parser.add_argument(
        "--answer-style", choices=("sure", "content"), default="sure", help="benign answers"
    )
    parser.add_argument(
        "--pretrain-phrases", action="store_true", help="pre-train on the spoken phrase too"
    )
    parser.add_argument(
        "--pretrain-cache", type=Path, default=None, help="reuse identical audio pre-training"
    )
    parser.add_argument("--ship", action="store_true", help="copy the result into the package")
    args = parser.parse_args(argv)
    config = TrainConfig(
        data_dir=args.data,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        aux_weight=args.aux_weight,
        pretrain_steps=args.pretrain_steps,
        align_weight=args.align_weight,
        spec_augment=args.spec_augment,
        audio_width=args.audio_width,
        answer_style=args.answer_style,
        pretrain_cache=args.pretrain_cache,
        pretrain_phrases=args.pretrain_phrases,
        **({"mix": args.mix} if args.mix else {}),
    )
    model, processor, log = train(config, report=lambda e: print(json.dumps(e), flush=True))
    out = save_checkpoint(model, processor, log, args.out)
    if args.ship:
        shutil.rmtree(SHIPPED, ignore_errors=True)
        shutil.copytree(out, SHIPPED)
    summary = {k: log[k] for k in ("train_seconds", "clips", "parameters")}
    print(json.dumps({"checkpoint": str(out), **summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
