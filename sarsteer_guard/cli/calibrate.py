"""``sarsteer-guard calibrate``: compute a vector file from calibration manifests."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from sarsteer_guard.cli._common import MODEL_HELP, check_writable


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` command."""
    from sarsteer_guard.defaults import (
        DEFAULT_BENIGN,
        DEFAULT_HARMFUL,
        DEFAULT_K,
        DEFAULT_LAMBDA,
        DEFAULT_PROMPT,
        DEFAULT_REFUSAL_INSTRUCTION,
        DEFAULT_REFUSAL_SEPARATOR,
    )

    p = subparsers.add_parser(
        "calibrate",
        help="compute SARSteer refusal vectors for a model",
        description="Capture last-position states for harmful and benign spoken turns, with and "
        "without the refusal instruction, and write the steering vectors (safetensors).",
    )
    p.add_argument("--model", default="tiny", help=MODEL_HELP)
    p.add_argument(
        "--engine", default="transformers", help="generation backend that runs the model"
    )
    p.add_argument("--harmful", type=Path, default=DEFAULT_HARMFUL, help="harmful manifest")
    p.add_argument("--benign", type=Path, default=DEFAULT_BENIGN, help="benign manifest")
    p.add_argument("--out", type=Path, required=True, help="vector file to write")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="benign principal directions removed")
    p.add_argument(
        "--lambda", dest="lam", type=float, default=DEFAULT_LAMBDA, help="projection strength"
    )
    p.add_argument(
        "--refusal-instruction",
        default=DEFAULT_REFUSAL_INSTRUCTION,
        help="text appended to the prompt for the refusing pass",
    )
    p.add_argument(
        "--refusal-separator",
        default=DEFAULT_REFUSAL_SEPARATOR,
        metavar="TEXT",
        help="joins the prompt and the refusal instruction (default: nothing, as the SARSteer "
        "reference does; --refusal-separator ' ' gives the form used before it was recorded)",
    )
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="text prompt sent with each clip")
    p.add_argument("--batch-size", type=int, default=8, help="clips per forward pass")
    p.add_argument("--text-only", action="store_true", help="calibrate on transcripts, no audio")
    p.add_argument("--limit", type=int, default=None, help="use only the first N turns of each set")
    p.add_argument(
        "--save-activations",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the captured states (safetensors), for plots and checks",
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="also draw per-layer norms, projection loss and separation (needs matplotlib)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Calibrate and write the vectors (and optionally the activations)."""
    from sarsteer_guard.backends import open_backend
    from sarsteer_guard.calibration import CalibrationConfig, calibrate
    from sarsteer_guard.errors import GuardError
    from sarsteer_guard.manifest import load_manifest

    if args.k < 0 or args.batch_size < 1:
        raise GuardError("--k must be >= 0 and --batch-size >= 1")
    outputs = (
        ("--out", args.out),
        ("--save-activations", args.save_activations),
        ("--plot", args.plot),
    )
    for flag, path in outputs:
        if path is not None:  # before the model loads: a typo must not cost a calibration
            check_writable(path, flag)
    if args.plot is not None:
        from sarsteer_guard.report import require_matplotlib

        require_matplotlib()  # fail before the long calibration, not after it
    harmful = load_manifest(args.harmful)
    benign = load_manifest(args.benign)
    if args.limit is not None:
        harmful = dataclasses.replace(harmful, items=harmful.items[: args.limit])
        benign = dataclasses.replace(benign, items=benign.items[: args.limit])
    backend = open_backend(args.engine, args.model)
    backend.load()  # not started: captures run on this thread
    facts = backend.facts
    config = CalibrationConfig(
        prompt=args.prompt,
        refusal_instruction=args.refusal_instruction,
        k=args.k,
        lam=args.lam,
        batch_size=args.batch_size,
        text_only=args.text_only,
        refusal_separator=args.refusal_separator,
    )
    result = calibrate(backend, harmful, benign, config, progress=not args.no_progress)
    try:  # checked at the start, but the disk can fill or the folder go meanwhile
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result.vectors.save(args.out)
        if args.save_activations is not None:
            result.activations.save(args.save_activations)
    except OSError as error:
        raise GuardError(
            f"cannot write the calibration result ({error.strerror or error}): "
            "free space or choose another --out and run again"
        ) from None
    if args.plot is not None:
        from sarsteer_guard.report.calibration_plot import plot_calibration

        plot_calibration(result.activations, result.vectors, args.plot)
    norms = result.vectors.vectors.norm(dim=-1)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "model": facts.model_id,
                "layers": facts.num_layers,
                "hidden_size": facts.hidden_size,
                "harmful": len(harmful.items),
                "benign": len(benign.items),
                "k": args.k,
                "lambda": args.lam,
                "refusal_separator": args.refusal_separator,
                "digest": result.vectors.digest,
                "vector_norm_max": round(float(norms.max()), 6),
                "seconds": round(result.seconds, 2),
                "rows_per_second": round(result.rows_per_second, 1),
                **({"plot": str(args.plot)} if args.plot is not None else {}),
            }
        ),
        file=sys.stdout,
    )
    return 0
