"""Steering-hook overhead on decode: SteeringHooks vs no hooks, same process, interleaved.

Target (issue): hook overhead <= 5% of decode time on the tiny CPU model.

Each repetition runs one greedy ``generate`` per case, in a fresh shuffled order, on the same
pre-encoded inputs (a shipped calibration clip with the default prompt), with
``min_new_tokens == max_new_tokens`` so every run decodes exactly the same number of steps.
A streamer timestamps each step, which splits a run into prefill (call to first token) and
decode (first token to last, ``tokens - 1`` steps). Cases:

- ``none``: no hooks.
- ``steer``: :class:`SteeringHooks` on every decoder layer, alpha 0.1, random ``[layers, hidden]``
  vectors (timing does not depend on their values).
- ``steer_alpha0``: the same hooks at alpha 0, the compile-friendly "always registered" mode.
- ``capture``: :class:`LastPositionCapture` left registered during generation (what the reference
  implementation pays per token; the product only captures during calibration).
- ``steer_persistent``: the transformers backend's form: hooks over every layer with
  ``max_rows=16`` buffers, the batch's vectors and per-row alpha 0.1 written in place.
- ``steer_disabled``: the same hooks registered but disabled: what an unsteered batch pays while
  a backend keeps its hooks on the model.

The last two need a library with ``SteeringHooks(max_rows=...)``; with an older one (when
comparing versions side by side) they are left out.

Overhead = median(decode case) / median(decode none) - 1, and the median of per-round paired
ratios (less sensitive to drift). Also: the capture's cost on a calibration-style forward pass
(forward with vs without capture), hook start/close cost, and us per hook call.

``--model 7b`` builds a Qwen2-Audio-7B-shaped model (random bf16 weights, text-only prompt) on
CUDA; without CUDA it prints a skip record.

Run: .venv/bin/python bench/bench_hooks.py [--repeats 20] [--tokens 64] [--batch 1,8] [--out F]
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    base_parser,
    emit,
    interleaved,
    machine_info,
    quiet_logs,
    ratio,
    summarize,
)

TARGET_OVERHEAD = 0.05
CASES = ("none", "steer", "steer_alpha0", "capture", "steer_persistent", "steer_disabled")


class _StepClock:
    """A generate() streamer that timestamps each decode step (first put is the prompt)."""

    def __init__(self, sync: Any = None) -> None:
        self.sync = sync
        self.steps: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.sync is not None:
            self.sync()
        self.steps.append(time.perf_counter())

    def end(self) -> None:
        """Nothing buffered."""


def _cases() -> tuple[str, ...]:
    import inspect

    from sarsteer_guard.steering import SteeringHooks

    persistent = "max_rows" in inspect.signature(SteeringHooks).parameters
    return CASES if persistent else CASES[:4]


def _persistent(layers: Any, vectors: Any, rows: int, *, enabled: bool) -> Any:
    """Hooks as the transformers backend keeps them, set up for one batch of ``rows``."""
    import torch

    from sarsteer_guard.steering import SteeringHooks

    hooks = SteeringHooks(layers, torch.zeros_like(vectors), alpha=0.0, max_rows=16)
    hooks.set_vectors(vectors)
    hooks.set_alpha([0.1] * rows)
    hooks.set_enabled(enabled)
    return hooks


def _one_generate(
    model: Any, layers: Any, vectors: Any, inputs: Any, case: str, tokens: int, sync: Any
) -> dict[str, float]:
    import torch

    from sarsteer_guard.steering import LastPositionCapture, SteeringHooks

    hooks: Any
    if case == "none":
        hooks = contextlib.nullcontext()
    elif case == "steer":
        hooks = SteeringHooks(layers, vectors, alpha=0.1)
    elif case == "steer_alpha0":
        hooks = SteeringHooks(layers, vectors, alpha=0.0)
    elif case == "capture":
        hooks = LastPositionCapture(layers)
    elif case in ("steer_persistent", "steer_disabled"):
        rows = int(inputs["input_ids"].shape[0])
        hooks = _persistent(layers, vectors, rows, enabled=case == "steer_persistent")
    else:  # pragma: no cover - programming error
        raise ValueError(case)
    clock = _StepClock(sync)
    with torch.inference_mode(), hooks:
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        model.generate(
            **inputs,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            streamer=clock,
        )
        if sync is not None:
            sync()
        t_end = time.perf_counter()
    if len(clock.steps) != tokens:
        raise RuntimeError(f"expected {tokens} decode steps, streamer saw {len(clock.steps)}")
    prefill = clock.steps[0] - t0
    decode = clock.steps[-1] - clock.steps[0]
    step_times = [b - a for a, b in zip(clock.steps, clock.steps[1:], strict=False)]
    return {
        "prefill_s": prefill,
        "decode_s": decode,
        "per_token_s": decode / (tokens - 1),
        # Median step: robust to the scheduler taking the core away for a few steps.
        "median_step_s": statistics.median(step_times),
        "total_s": t_end - t0,
    }


def _forward_capture_cost(lm: Any, inputs: Any, repeats: int) -> dict[str, Any]:
    """Calibration-style forward (no cache, last logits only) with vs without capture."""
    import torch

    from sarsteer_guard.steering import LastPositionCapture

    def fwd(capture: bool) -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            if capture:
                with LastPositionCapture(lm.decoder_layers) as cap:
                    lm.model(**inputs, use_cache=False, logits_to_keep=1)
                _ = cap.states
            else:
                lm.model(**inputs, use_cache=False, logits_to_keep=1)
            return time.perf_counter() - t0

    runs = interleaved(
        {"forward": lambda: fwd(False), "forward_capture": lambda: fwd(True)}, repeats, seed=7
    )
    base = statistics.median(runs["forward"])
    cap = statistics.median(runs["forward_capture"])
    return {
        "forward_ms": summarize(runs["forward"]),
        "forward_with_capture_ms": summarize(runs["forward_capture"]),
        "capture_overhead": ratio(cap - base, base),
        "capture_overhead_us_per_forward": round((cap - base) * 1e6, 1),
    }


def _start_close_cost(layers: Any, vectors: Any, n: int = 200) -> dict[str, float]:
    from sarsteer_guard.steering import LastPositionCapture, SteeringHooks

    def loop(make: Any) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            with make():
                pass
        return (time.perf_counter() - t0) / n * 1e6

    return {
        "steering_hooks_start_close_us": round(
            statistics.median(loop(lambda: SteeringHooks(layers, vectors)) for _ in range(5)), 1
        ),
        "capture_start_close_us": round(
            statistics.median(loop(lambda: LastPositionCapture(layers)) for _ in range(5)), 1
        ),
    }


def _hook_call_cost(hidden: int, rows: int, calls: int = 2000) -> dict[str, float]:
    """Microseconds one hook adds to one decode-step layer call, isolated from the model.

    An ``nn.Identity`` stands in for a decoder layer (its own forward costs ~nothing), called on
    a ``[rows, 1, hidden]`` decode-step tensor with and without each hook; medians of 7 blocks.
    """
    import torch
    from torch import nn

    from sarsteer_guard.steering import LastPositionCapture, SteeringHooks

    layer = nn.Identity()
    x = torch.randn(rows, 1, hidden)
    vec = torch.randn(1, hidden)

    def block() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for _ in range(calls):
                layer(x)
            return (time.perf_counter() - t0) / calls * 1e6

    def with_hooks(make: Any) -> float:
        with make():
            return block()

    makers: dict[str, Any] = {
        "none": lambda: contextlib.nullcontext(),
        "steer": lambda: SteeringHooks([layer], vec, alpha=0.1),
        "steer_alpha0": lambda: SteeringHooks([layer], vec, alpha=0.0),
        "capture": lambda: LastPositionCapture([layer]),
    }
    if "steer_persistent" in _cases():
        makers["steer_persistent"] = lambda: _persistent([layer], vec, rows, enabled=True)
        makers["steer_disabled"] = lambda: _persistent([layer], vec, rows, enabled=False)
    runs = interleaved({k: (lambda m=m: with_hooks(m)) for k, m in makers.items()}, 7, seed=11)
    base = statistics.median(runs["none"])
    return {k: round(statistics.median(v) - base, 2) for k, v in runs.items() if k != "none"}


def _bench_batch(
    model: Any,
    layers: Any,
    vectors: Any,
    inputs: Any,
    tokens: int,
    repeats: int,
    sync: Any,
    seed: int,
) -> dict[str, Any]:
    cases = _cases()
    runs = interleaved(
        {
            case: (lambda c=case: _one_generate(model, layers, vectors, inputs, c, tokens, sync))
            for case in cases
        },
        repeats,
        seed=seed,
    )
    out: dict[str, Any] = {"cases": {}}
    base_decode = statistics.median(r["decode_s"] for r in runs["none"])
    base_step = statistics.median(r["median_step_s"] for r in runs["none"])
    for case in cases:
        rs = runs[case]
        entry: dict[str, Any] = {
            "prefill_ms": summarize([r["prefill_s"] for r in rs]),
            "decode_ms": summarize([r["decode_s"] for r in rs]),
            "per_token_decode_ms": summarize([r["per_token_s"] for r in rs], digits=4),
            "median_step_ms": summarize([r["median_step_s"] for r in rs], digits=4),
        }
        if case != "none":
            decode = statistics.median(r["decode_s"] for r in rs)
            paired = [r["decode_s"] / b["decode_s"] for r, b in zip(rs, runs["none"], strict=True)]
            prefill_paired = [
                r["prefill_s"] / b["prefill_s"] for r, b in zip(rs, runs["none"], strict=True)
            ]
            step = statistics.median(r["median_step_s"] for r in rs)
            step_paired = [
                r["median_step_s"] / b["median_step_s"]
                for r, b in zip(rs, runs["none"], strict=True)
            ]
            entry["decode_overhead_vs_none"] = ratio(decode - base_decode, base_decode)
            entry["decode_overhead_paired_median"] = round(statistics.median(paired) - 1, 4)
            entry["step_overhead_vs_none"] = ratio(step - base_step, base_step)
            entry["step_overhead_paired_median"] = round(statistics.median(step_paired) - 1, 4)
            entry["prefill_overhead_paired_median"] = round(
                statistics.median(prefill_paired) - 1, 4
            )
            steps = (tokens - 1) * len(layers)
            entry["us_per_hook_call"] = round((decode - base_decode) / steps * 1e6, 2)
        out["cases"][case] = entry
    steer = out["cases"]["steer"]["step_overhead_paired_median"]
    alpha0 = out["cases"]["steer_alpha0"]["step_overhead_paired_median"]
    out["target_met"] = bool(steer <= TARGET_OVERHEAD and alpha0 <= TARGET_OVERHEAD)
    return out


def run_tiny(args: Any) -> dict[str, Any]:
    import torch

    from sarsteer_guard.audio import load_audio
    from sarsteer_guard.defaults import DEFAULT_HARMFUL, DEFAULT_PROMPT
    from sarsteer_guard.manifest import load_manifest
    from sarsteer_guard.models import Message, load_model

    lm = load_model("tiny")
    paths = [item.audio for item in load_manifest(DEFAULT_HARMFUL).items if item.audio is not None]
    vectors = torch.randn(lm.num_layers, lm.hidden_size, generator=torch.Generator().manual_seed(0))
    result: dict[str, Any] = {
        "model": "tiny",
        "layers": lm.num_layers,
        "hidden_size": lm.hidden_size,
        "device": str(lm.device),
        "dtype": str(lm.dtype).removeprefix("torch."),
        "tokens_per_generate": args.tokens,
        "repeats": args.repeats,
        "batches": {},
    }
    for b in args.batch:
        clips = [load_audio(paths[i % len(paths)], target_rate=lm.sampling_rate) for i in range(b)]
        inputs = lm.encode([[Message("user", DEFAULT_PROMPT, clip)] for clip in clips])
        for _ in range(2):  # warm-up: allocator, kernels, lazy imports
            for case in _cases():
                _one_generate(lm.model, lm.decoder_layers, vectors, inputs, case, args.tokens, None)
        entry = _bench_batch(
            lm.model, lm.decoder_layers, vectors, inputs, args.tokens, args.repeats, None, seed=b
        )
        entry["prompt_tokens"] = int(inputs["input_ids"].shape[1])
        micro = _hook_call_cost(lm.hidden_size, b)
        step_ms = entry["cases"]["none"]["median_step_ms"]["median"]
        entry["hook_call_us_isolated"] = micro
        entry["overhead_from_isolated_hook_cost"] = {
            k: round(v * lm.num_layers / (step_ms * 1000), 4) for k, v in micro.items()
        }
        entry["calibration_forward_capture"] = _forward_capture_cost(lm, inputs, args.repeats)
        result["batches"][f"batch_{b}"] = entry
    result["hook_start_close"] = _start_close_cost(lm.decoder_layers, vectors)
    first = result["batches"][f"batch_{args.batch[0]}"]
    result["summary"] = {
        "batch": args.batch[0],
        "steer_step_overhead": first["cases"]["steer"]["step_overhead_paired_median"],
        "steer_alpha0_step_overhead": first["cases"]["steer_alpha0"]["step_overhead_paired_median"],
        "capture_step_overhead": first["cases"]["capture"]["step_overhead_paired_median"],
        **{
            f"{case}_step_overhead": first["cases"][case]["step_overhead_paired_median"]
            for case in ("steer_persistent", "steer_disabled")
            if case in first["cases"]
        },
        "steer_decode_overhead_wall": first["cases"]["steer"]["decode_overhead_paired_median"],
        "steer_overhead_from_isolated_hook_cost": first["overhead_from_isolated_hook_cost"][
            "steer"
        ],
        "median_step_ms_none": first["cases"]["none"]["median_step_ms"]["median"],
        "per_token_decode_ms_none": first["cases"]["none"]["per_token_decode_ms"]["median"],
        "prefill_ms_none": first["cases"]["none"]["prefill_ms"]["median"],
    }
    result["target"] = f"steering hook decode overhead <= {TARGET_OVERHEAD:.0%} (tiny, CPU)"
    result["target_met"] = all(v["target_met"] for v in result["batches"].values())
    return result


def qwen2_audio_7b_config(scale: int = 1) -> Any:
    """Qwen2-Audio-7B's shapes (``scale`` > 1 shrinks widths and depths, for a CPU dry run)."""
    from transformers import Qwen2AudioConfig

    text = {
        "model_type": "qwen2",
        "vocab_size": 156032 // scale,
        "hidden_size": 4096 // scale,
        "intermediate_size": 11008 // scale,
        "num_hidden_layers": 32 // scale,
        "num_attention_heads": 32 // scale,
        "num_key_value_heads": 32 // scale,
        "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "pad_token_id": 0,
        "eos_token_id": 1,
    }
    audio = {
        "model_type": "qwen2_audio_encoder",
        "num_mel_bins": 128,
        "encoder_layers": 32 // scale,
        "encoder_attention_heads": 20 // scale,
        "encoder_ffn_dim": 5120 // scale,
        "d_model": 1280 // scale,
        "max_source_positions": 1500,
    }
    return Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=151646 // scale)


def run_7b(args: Any, *, scale: int = 1, device: str = "cuda") -> dict[str, Any]:
    """7B-shaped decode overhead on GPU: random bf16 weights, a text-only prompt.

    Hook cost does not depend on the weights' values or on the audio, so random weights and a
    random 128-token text prompt measure the same dispatch and arithmetic as the real checkpoint.
    """
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = qwen2_audio_7b_config(scale)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model: Any = Qwen2AudioForConditionalGeneration(config)
            model.eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    layers = list(model.model.language_model.layers)
    hidden = config.text_config.hidden_size
    vectors = torch.randn(len(layers), hidden, generator=torch.Generator().manual_seed(0))
    sync = torch.cuda.synchronize if device == "cuda" else None
    result: dict[str, Any] = {
        "model": "qwen2-audio-7b-shaped (random weights, text-only prompt)",
        "layers": len(layers),
        "hidden_size": hidden,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "tokens_per_generate": args.tokens,
        "repeats": args.repeats,
        "batches": {},
    }
    gen = torch.Generator().manual_seed(1)
    for b in args.batch:
        ids = torch.randint(10, config.text_config.vocab_size - 10, (b, 128), generator=gen)
        inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
        for _ in range(2):
            for case in _cases():
                _one_generate(model, layers, vectors, inputs, case, args.tokens, sync)
        entry = _bench_batch(model, layers, vectors, inputs, args.tokens, args.repeats, sync, b)
        entry["prompt_tokens"] = 128
        result["batches"][f"batch_{b}"] = entry
    result["target"] = f"steering hook decode overhead <= {TARGET_OVERHEAD:.0%}"
    result["target_met"] = all(v["target_met"] for v in result["batches"].values())
    return result


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--model", choices=("tiny", "7b"), default="tiny")
    parser.add_argument("--repeats", type=int, default=20, help="interleaved rounds (>= 15)")
    parser.add_argument("--tokens", type=int, default=64, help="decoded tokens per generate")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument(
        "--batch",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 8],
        help="comma-separated batch sizes",
    )
    args = parser.parse_args()
    if args.tokens < 2:
        parser.error("--tokens must be >= 2 (decode time is first token to last)")
    quiet_logs()
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"benchmark": "hook_overhead", "machine": machine_info()}
    if args.model == "7b":
        if not torch.cuda.is_available():
            result["skipped"] = (
                "--model 7b needs CUDA (a 7B model in bf16 takes ~17 GB); no GPU here"
            )
            emit(result, args.out)
            return
        result.update(run_7b(args))
    else:
        result.update(run_tiny(args))
    emit(result, args.out)


if __name__ == "__main__":
    main()
