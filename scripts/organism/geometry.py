"""Where do spoken requests lie along the refusal direction (the selectivity question)?

    OMP_NUM_THREADS=1 .venv/bin/python scripts/organism/geometry.py MODEL [--split heldout]

Calibrates on the training-side manifests (the shipped pipeline), then, per decoder layer:

- ``proj``: mean projection of the last-position state onto the unit refusal direction
  ``d_l/|d_l|`` for harmful and for benign speech of ``--split``, unsteered, and the gap
  (harmful minus benign, in units of ``|d_l|``): positive means harmful speech already sits
  nearer refusal, so a steering strength exists that flips harmful turns before benign ones;
- ``in_benign``: the share of ``|d_l|^2`` inside the top-k benign subspace (what lambda 1
  removes; near 0 means the ablation changes little).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sarsteer_guard.audio import load_audio
from sarsteer_guard.calibration import CalibrationConfig, calibrate, capture_last_states
from sarsteer_guard.manifest import load_manifest
from sarsteer_guard.models import load_model
from sarsteer_guard.models.base import Message
from sarsteer_guard.steering.extract import mean_difference, principal_directions


def _states(lm: object, manifest: Path, prompt: str) -> torch.Tensor:
    items = load_manifest(manifest).items
    rows = []
    for start in range(0, len(items), 8):
        convs = [
            [Message(role="user", text=prompt, audio=load_audio(i.audio, target_rate=16000))]
            for i in items[start : start + 8]
            if i.audio is not None
        ]
        rows.append(capture_last_states(lm, convs))  # type: ignore[arg-type]
    return torch.cat(rows)


def main(argv: list[str] | None = None) -> int:
    """Calibrate, capture the split's states, print per-layer projections."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", type=Path, default=Path("build/organism"))
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    lm = load_model(args.model, device="cpu")
    config = CalibrationConfig(k=args.k)
    cal = args.data / "calibration"
    result = calibrate(
        lm,
        load_manifest(cal / "harmful.jsonl"),
        load_manifest(cal / "benign.jsonl"),
        config,
        progress=False,
    )
    acts = result.activations
    d = mean_difference(acts.harmful_refusal, acts.harmful_base)  # [L, H]
    u = principal_directions(acts.benign_base, args.k)  # [L, H, k]
    harmful = _states(lm, args.data / args.split / "harmful.jsonl", config.prompt)
    benign = _states(lm, args.data / args.split / "benign.jsonl", config.prompt)
    layers = []
    for layer in range(d.shape[0]):
        norm = float(d[layer].norm())
        unit = d[layer] / norm
        ph = float((harmful[:, layer] @ unit).mean())
        pb = float((benign[:, layer] @ unit).mean())
        inside = float((u[layer].T @ d[layer]).norm() ** 2 / norm**2)
        layers.append(
            {
                "layer": layer,
                "d_norm": round(norm, 3),
                "proj_harmful": round(ph, 3),
                "proj_benign": round(pb, 3),
                "gap_in_d_norms": round((ph - pb) / norm, 3),
                "in_benign": round(inside, 3),
            }
        )
    print(json.dumps({"split": args.split, "k": args.k, "layers": layers}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
