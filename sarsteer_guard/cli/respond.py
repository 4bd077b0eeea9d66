"""``sarsteer-guard respond``: answer one spoken request through the Guard."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sarsteer_guard.audio.pcm import FloatArray
    from sarsteer_guard.guard.events import ContextValue

from sarsteer_guard.cli._common import (
    AUDIT_DEFAULT,
    AUDIT_HELP,
    MODEL_REQUIRED_HELP,
    STORE_HELP,
    parse_context,
    require_model,
)


def register(subparsers: Any) -> None:
    """Add the ``respond`` command."""
    from sarsteer_guard.defaults import DEFAULT_MAX_NEW_TOKENS

    p = subparsers.add_parser(
        "respond",
        help="answer one audio file with the guarded model",
        description="Run one spoken request through the Guard: the policy picks the steering "
        "for the context, vectors come from --vectors or the store (calibrated on first use), "
        "and the answer is printed as text or JSON.",
    )
    p.add_argument("--model", default=None, help=MODEL_REQUIRED_HELP)
    p.add_argument(
        "--engine", default="transformers", help="generation backend that runs the model"
    )
    p.add_argument(
        "--audio",
        type=Path,
        required=True,
        help="WAV/FLAC/OGG/MP3, any rate, 0.1-30 s; - reads the file from standard input",
    )
    p.add_argument("--vectors", type=Path, default=None, help="vector file from `calibrate`")
    p.add_argument("--alpha", type=float, default=None, help="override the policy's alpha")
    p.add_argument("--prompt", default=None, help="text sent with the audio (default: policy's)")
    p.add_argument("--policy", type=Path, default=None, help="policy YAML (default: shipped)")
    p.add_argument(
        "--context",
        "-c",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="turn context for policy rules (repeatable), e.g. channel=kids",
    )
    p.add_argument("--store", default=None, help=STORE_HELP)
    p.add_argument("--audit", default=None, help=AUDIT_HELP + AUDIT_DEFAULT)
    p.add_argument("--session", default="cli", help="session id recorded with the turn")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (--stream: one per line per event)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate inputs before loading anything heavy, then run one turn."""
    from sarsteer_guard.errors import GuardError

    require_model(args.model, "respond")
    if args.max_new_tokens < 1:
        raise GuardError("--max-new-tokens must be at least 1")
    if args.alpha is not None and not 0 <= args.alpha <= 10:
        raise GuardError("--alpha must be between 0 and 10 (0 turns steering off)")
    context = parse_context(args.context)
    audio, rate = _read_clip(args.audio)  # fail on bad audio before loading a model
    return asyncio.run(_respond(args, audio, rate, context))


def _read_clip(path: Path) -> tuple[FloatArray, int]:
    """The clip as float32 mono at its own rate, within what the Guard accepts.

    ``-`` reads standard input; anything else must be a regular file (a FIFO would
    block forever). Files longer than the cap are refused from their header, and the
    decoder never runs past it, so a small file claiming hours of audio costs nothing.
    """
    from sarsteer_guard.audio import MAX_CLIP_S, check_clip_length, read_audio, read_audio_stream

    if str(path) == "-":
        audio, rate = read_audio_stream(sys.stdin.buffer, name="<stdin>", max_seconds=MAX_CLIP_S)
        name = "<stdin>"
    else:
        audio, rate = read_audio(path, max_seconds=MAX_CLIP_S)
        name = str(path)
    check_clip_length(audio.shape[0], rate, name=name, max_s=MAX_CLIP_S)
    return audio, rate


async def _respond(
    args: argparse.Namespace, audio: FloatArray, rate: int, context: dict[str, ContextValue]
) -> int:
    from sarsteer_guard.guard.core import Guard
    from sarsteer_guard.guard.events import TextDelta, Turn, TurnDecision

    guard = Guard(
        args.model,
        args.policy,
        args.store,
        args.audit,
        engine=args.engine,
        vectors=args.vectors,
        alpha=args.alpha,
        turn_prompt=args.prompt,
        watch_policy=False,
        progress=True,
    )
    turn = Turn(
        audio=audio,
        sample_rate=rate,
        sample_format="float32",
        session_id=args.session,
        context=context,
        max_new_tokens=args.max_new_tokens,
        history=[],
    )
    status = 0
    async with guard:
        async for event in guard.respond(turn):
            if isinstance(event, TextDelta):
                if args.stream:
                    _print_delta(event, as_json=args.json)
            elif isinstance(event, TurnDecision):
                _print_decision(event, streamed=args.stream, as_json=args.json)
            else:
                print(f"sarsteer-guard: error: {event.message}", file=sys.stderr)
                status = 2
    return status


def _print_delta(event: Any, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(dataclasses.asdict(event)), flush=True)
    else:
        print(event.text, end="", flush=True)


def _print_decision(event: Any, *, streamed: bool, as_json: bool) -> None:
    if not as_json:
        print("" if streamed else event.text)
        return
    record = {
        "text": event.text,
        "model_text": event.model_text,
        "alpha": event.alpha,
        "steered": event.steered,
        "refused": event.refused,
        "refusal_keyword": event.refusal_keyword,
        "refusal_score": event.refusal_score,
        "latency_ms": event.timings.total_ms,
        "tokens": event.tokens,
        "policy": f"{event.policy}@{event.policy_version}",
        "rule": event.rule,
        "mode": event.mode,
        "flags": list(event.flags),
        "vector_set_id": event.vector_set_id,
        "turn_id": event.turn_id,
        "audit_id": event.audit_id,
        "timings": dataclasses.asdict(event.timings),
    }
    if streamed:
        record["type"] = "decision"
    print(json.dumps(record), flush=True)
