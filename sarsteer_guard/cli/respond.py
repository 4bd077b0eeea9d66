"""``sarsteer-guard respond``: answer one spoken request, steered or not."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``respond`` command."""
    from sarsteer_guard.defaults import DEFAULT_ALPHA, DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPT

    p = subparsers.add_parser(
        "respond",
        help="answer one audio file with the model, steered by a vector file",
        description="Run the audio-language model on one spoken request. With --vectors the "
        "SARSteer hooks add alpha * v_l at the last position of every decoder layer.",
    )
    p.add_argument("--model", default="tiny", help="hub id, local directory, or a built-in: tiny")
    p.add_argument("--audio", type=Path, required=True, help="WAV/FLAC/OGG/MP3, any rate")
    p.add_argument("--vectors", type=Path, default=None, help="vector file from `calibrate`")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="steering strength")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="text prompt sent with the audio")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--refusal-keyword", action="append", default=[], metavar="TEXT")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load, optionally steer, generate, detect refusal, print."""
    import torch

    from sarsteer_guard.audio import load_audio
    from sarsteer_guard.errors import GuardError
    from sarsteer_guard.models import Message, load_model
    from sarsteer_guard.refusal import RefusalDetector
    from sarsteer_guard.steering import SteeringHooks, SteeringVectors

    if args.max_new_tokens < 1:
        raise GuardError("--max-new-tokens must be at least 1")
    if args.alpha < 0:
        raise GuardError("--alpha must be >= 0 (0 turns steering off)")
    lm = load_model(args.model)
    clip = load_audio(args.audio, target_rate=lm.sampling_rate)
    vectors = None
    if args.vectors is not None:
        vectors = SteeringVectors.load(args.vectors)
        vectors.check_compatible(
            num_layers=lm.num_layers, hidden_size=lm.hidden_size, fingerprint=lm.fingerprint
        )
    inputs = lm.encode([[Message(role="user", text=args.prompt, audio=clip)]])
    steered = vectors is not None and args.alpha > 0
    started = time.perf_counter()
    with torch.inference_mode():
        if steered and vectors is not None:
            with SteeringHooks(lm.decoder_layers, vectors.vectors, alpha=args.alpha):
                new_ids = lm.generate(inputs, max_new_tokens=args.max_new_tokens)
        else:
            new_ids = lm.generate(inputs, max_new_tokens=args.max_new_tokens)
    latency_ms = (time.perf_counter() - started) * 1000
    text = lm.decode(new_ids[0])
    verdict = RefusalDetector(args.refusal_keyword)(text)
    if args.json:
        print(
            json.dumps(
                {
                    "text": text,
                    "alpha": args.alpha if steered else 0.0,
                    "steered": steered,
                    "refused": verdict.refused,
                    "refusal_keyword": verdict.keyword,
                    "latency_ms": round(latency_ms, 1),
                    "tokens": int(new_ids.shape[-1]),
                    "model": lm.model_id,
                    "vectors": vectors.digest if vectors is not None else None,
                }
            )
        )
    else:
        print(text)
    return 0
