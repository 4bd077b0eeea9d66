"""``sarsteer-guard synth PROMPTS --out DIR``: speak a prompt list into a manifest.

PROMPTS has one request per line, optionally ``text<TAB>category``. Each request becomes
``--variants`` clips with a voice, rate and pitch drawn from the lists given, optionally
sped up or slowed down, sent through an 8 kHz mu-law telephone line, or mixed with noise at
a chosen SNR. The same seed gives the same files. Output: ``DIR/NAME.jsonl`` (the
calibration/evaluation manifest format) and ``DIR/audio/*.flac``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from sarsteer_guard.errors import GuardError

_T = TypeVar("_T")


def _list_of(kind: Callable[[str], _T], what: str) -> Callable[[str], tuple[_T, ...]]:
    def parse(text: str) -> tuple[_T, ...]:
        try:
            values = tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"{text!r}: comma-separated {what} expected"
            ) from error
        if not values:
            raise argparse.ArgumentTypeError(f"give at least one {what}")
        return values

    return parse


def register(subparsers: Any) -> None:
    """Add the ``synth`` command."""
    p = subparsers.add_parser(
        "synth",
        help="speak a text prompt list with espeak-ng (+ sox augmentation) into a manifest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompts", metavar="PROMPTS", help="text file: one request per line")
    p.add_argument("--out", required=True, help="output folder (manifest and audio/)")
    p.add_argument("--name", default=None, help="manifest name (default: PROMPTS file stem)")
    p.add_argument(
        "--voices",
        type=_list_of(str, "voice"),
        default=("en-us",),
        help="espeak-ng voices, e.g. en-us,en-gb+f3 (default en-us)",
    )
    p.add_argument(
        "--rates",
        type=_list_of(int, "rate"),
        default=(165,),
        help="words per minute, e.g. 140,170,200 (default 165)",
    )
    p.add_argument(
        "--pitches",
        type=_list_of(int, "pitch"),
        default=(50,),
        help="espeak-ng pitch 0-99 (default 50)",
    )
    p.add_argument(
        "--speeds",
        type=_list_of(float, "factor"),
        default=(1.0,),
        help="sox speed factors, e.g. 0.9,1.0,1.1 (default 1.0)",
    )
    p.add_argument(
        "--telephone",
        type=float,
        default=0.0,
        help="share of clips sent through an 8 kHz mu-law phone line (0-1)",
    )
    p.add_argument("--noise", type=float, default=0.0, help="share of clips with noise (0-1)")
    p.add_argument(
        "--snr",
        type=_list_of(float, "SNR in dB"),
        default=(20.0,),
        help="noise levels in dB SNR to draw from (default 20)",
    )
    p.add_argument("--variants", type=int, default=1, help="clips per request (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Render the clips and print the manifest path."""
    from pathlib import Path

    from sarsteer_guard.synth import SynthPlan, read_prompts, synthesize_manifest
    from sarsteer_guard.synth.augment import sox_available
    from sarsteer_guard.synth.espeak import espeak_available

    if not espeak_available():
        raise GuardError("espeak-ng is not installed; apt-get install espeak-ng")
    augmenting = args.telephone > 0 or any(s != 1.0 for s in args.speeds)
    if augmenting and not sox_available():
        raise GuardError(
            "sox is not installed (needed for --telephone/--speeds); apt-get install sox"
        )
    prompts = read_prompts(args.prompts)
    plan = SynthPlan(
        voices=args.voices,
        rates=args.rates,
        pitches=args.pitches,
        speeds=args.speeds,
        telephone_share=args.telephone,
        noise_share=args.noise,
        snr_db=args.snr,
        variants=args.variants,
        seed=args.seed,
    )
    name = args.name or Path(args.prompts).stem
    manifest, specs = synthesize_manifest(
        prompts, args.out, name, plan, progress=not args.no_progress
    )
    print(f"{manifest}: {len(specs)} clips from {len(prompts)} prompts")
    return 0
