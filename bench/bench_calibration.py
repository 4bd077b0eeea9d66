"""Calibration throughput: batched vs one-at-a-time capture, plus the end-to-end CLI on tiny.

Targets (issues):
- batched calibration (batch 8) >= 3x the one-at-a-time (batch 1) rate, same items, same run;
- ``sarsteer-guard calibrate --model tiny`` on the full shipped set, then ``sarsteer-guard
  respond --model tiny --vectors ... --audio <shipped clip> --json``, finish within 60 s on
  2 CPU cores.

Throughput: :func:`sarsteer_guard.calibration.capture_pairs` over the first N harmful and N
benign shipped turns (default 32 + 32), at batch sizes 1, 8 and 16, interleaved in a shuffled
order each round; turns/s = turns / wall time (each turn is two rows: as is and with the
refusal instruction). Also a stage profile per batch size (audio file loading, processor:
feature extraction vs the rest, audio tower, text decoder) to show what dominates, and the
full ``calibrate()`` time on the full shipped set in-process.

Run: .venv/bin/python bench/bench_calibration.py [--items 32] [--repeats 3] [--cli-repeats 2]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO,
    base_parser,
    emit,
    interleaved,
    machine_info,
    quiet_logs,
    ratio,
    summarize,
)

TARGET_SPEEDUP = 3.0
TARGET_CLI_S = 60.0


def _capture_time(lm: Any, items: Any, batch_size: int) -> float:
    from sarsteer_guard.calibration import CalibrationConfig, capture_pairs

    config = CalibrationConfig(batch_size=batch_size)
    t0 = time.perf_counter()
    capture_pairs(lm, items, config, progress=False)
    return time.perf_counter() - t0


class _Span:
    """Accumulates wall time between a module's forward pre-hook and its forward hook."""

    def __init__(self, module: Any) -> None:
        self.total = 0.0
        self._t0 = 0.0
        self._handles = [
            module.register_forward_pre_hook(self._pre),
            module.register_forward_hook(self._post),
        ]

    def _pre(self, *_: Any) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self.total += time.perf_counter() - self._t0

    def close(self) -> None:
        for h in self._handles:
            h.remove()


class _LayersSpan:
    """Wall time from the first decoder layer's pre-hook to the last layer's hook."""

    def __init__(self, layers: Any) -> None:
        self.total = 0.0
        self._t0 = 0.0
        self._handles = [
            layers[0].register_forward_pre_hook(self._pre),
            layers[-1].register_forward_hook(self._post),
        ]

    def _pre(self, *_: Any) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self.total += time.perf_counter() - self._t0

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _profile(lm: Any, items: Any, batch_size: int) -> dict[str, float]:
    """One capture pass split into stages (seconds, totals over all items)."""
    import torch

    from sarsteer_guard.audio import load_audio
    from sarsteer_guard.calibration import (
        CalibrationConfig,
        _conversations,
        _forward_kwargs,
    )
    from sarsteer_guard.steering import LastPositionCapture

    config = CalibrationConfig(batch_size=batch_size)
    fe = lm.processor.feature_extractor
    audio_span = _Span(lm.model.model.audio_tower)
    layers_span = _LayersSpan(lm.decoder_layers)
    stages = {"load_audio": 0.0, "encode": 0.0, "feature_extraction": 0.0, "forward": 0.0}
    kwargs = _forward_kwargs(lm.model)
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            t0 = time.perf_counter()
            clips = [load_audio(it.audio, target_rate=lm.sampling_rate) for it in batch]
            t1 = time.perf_counter()
            conversations = _conversations(batch, clips, config)
            inputs = lm.encode(conversations)
            t2 = time.perf_counter()
            with torch.inference_mode(), LastPositionCapture(lm.decoder_layers) as cap:
                lm.model(**inputs, **kwargs)
            _ = cap.states
            t3 = time.perf_counter()
            # Feature extraction alone on the same clips (the processor sees each clip twice).
            fe(
                [c for c in clips for _ in range(2)],
                sampling_rate=lm.sampling_rate,
                return_attention_mask=True,
                padding="max_length",
                return_tensors="pt",
            )
            t4 = time.perf_counter()
            stages["load_audio"] += t1 - t0
            stages["encode"] += t2 - t1
            stages["forward"] += t3 - t2
            stages["feature_extraction"] += t4 - t3
    finally:
        audio_span.close()
        layers_span.close()
    stages["audio_tower"] = audio_span.total
    stages["text_decoder_layers"] = layers_span.total
    return stages


@contextmanager
def _dedup_audio(lm: Any) -> Iterator[None]:
    """Prototype (bench only): front end and audio tower run once per clip, not once per row.

    ``capture_pairs`` sends every clip twice (rows ``i`` and ``b + i``: as is and with the
    refusal instruction). This wraps the feature extractor and the audio tower so that when
    the second half of a batch repeats the first, only the first half is computed and its
    output is duplicated. Shows what the proposed ``calibration.py`` change would save.
    """
    import torch

    fe = lm.processor.feature_extractor
    tower = lm.model.model.audio_tower
    original_cls = fe.__class__
    original_forward = tower.forward

    def fe_call(self: Any, audio: Any, *args: Any, **kwargs: Any) -> Any:
        n = len(audio) if isinstance(audio, list) else 0
        half = n // 2
        if n and n % 2 == 0 and all(audio[i] is audio[half + i] for i in range(half)):
            out = original_cls.__call__(self, audio[:half], *args, **kwargs)
            for key in list(out.keys()):
                if isinstance(out[key], torch.Tensor):
                    out[key] = torch.cat([out[key], out[key]])
            return out
        return original_cls.__call__(self, audio, *args, **kwargs)

    def tower_forward(input_features: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        n = input_features.shape[0]
        half = n // 2
        if n % 2 == 0 and half and torch.equal(input_features[:half], input_features[half:]):
            mask = attention_mask[:half] if isinstance(attention_mask, torch.Tensor) else None
            out = original_forward(input_features[:half], attention_mask=mask, **kwargs)
            out.last_hidden_state = torch.cat([out.last_hidden_state, out.last_hidden_state])
            return out
        return original_forward(input_features, attention_mask=attention_mask, **kwargs)

    fe.__class__ = type("DedupFeatureExtractor", (original_cls,), {"__call__": fe_call})
    tower.forward = tower_forward
    try:
        yield
    finally:
        fe.__class__ = original_cls
        del tower.forward


def _dedup_prototype(lm: Any, items: Any, repeats: int, batches: list[int]) -> dict[str, Any]:
    """Measure the dedup prototype against the current code, and check it is equivalent."""
    from sarsteer_guard.calibration import CalibrationConfig, capture_pairs

    def timed(b: int, dedup: bool) -> float:
        if not dedup:
            return _capture_time(lm, items, b)
        with _dedup_audio(lm):
            return _capture_time(lm, items, b)

    cases = {}
    for b in batches:
        cases[f"batch_{b}"] = lambda b=b: timed(b, False)
        cases[f"batch_{b}_dedup"] = lambda b=b: timed(b, True)
    runs = interleaved(cases, repeats, seed=9)
    config = CalibrationConfig(batch_size=batches[-1])
    ref = capture_pairs(lm, items[:8], config, progress=False)
    with _dedup_audio(lm):
        got = capture_pairs(lm, items[:8], config, progress=False)
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got, strict=True))
    n = len(items)
    out: dict[str, Any] = {"max_abs_state_diff_vs_current": diff}
    for key, times in runs.items():
        out[key] = {"turns_per_s": round(n / statistics.median(times), 2)}
    for b in batches:
        out[f"batch_{b}_dedup"]["speedup_vs_current"] = ratio(
            statistics.median(runs[f"batch_{b}"]), statistics.median(runs[f"batch_{b}_dedup"]), 3
        )
    return out


def _cli(args: list[str], timeout: float) -> tuple[float, str, int]:
    exe = Path(sys.executable).with_name("sarsteer-guard")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sarsteer_guard"]
    env = dict(os.environ, SARSTEER_LOG_LEVEL="WARNING")
    t0 = time.perf_counter()
    proc = subprocess.run(  # noqa: S603 - fixed argv
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )
    return time.perf_counter() - t0, proc.stdout, proc.returncode


def _end_to_end(repeats: int, clip: Path) -> dict[str, Any]:
    """Wall time of ``calibrate`` (full shipped set) then ``respond`` as subprocesses."""
    runs: list[dict[str, Any]] = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            vectors = Path(tmp) / "vectors.safetensors"
            cal_s, cal_out, cal_rc = _cli(
                ["calibrate", "--model", "tiny", "--out", str(vectors), "--no-progress"], 600
            )
            if cal_rc != 0:
                raise SystemExit(f"calibrate failed (rc {cal_rc}): {cal_out[-500:]}")
            resp_s, resp_out, resp_rc = _cli(
                [
                    "respond",
                    "--model",
                    "tiny",
                    "--vectors",
                    str(vectors),
                    "--audio",
                    str(clip),
                    "--json",
                ],
                600,
            )
            if resp_rc != 0:
                raise SystemExit(f"respond failed (rc {resp_rc}): {resp_out[-500:]}")
            cal = json.loads(cal_out.strip().splitlines()[-1])
            runs.append(
                {
                    "calibrate_wall_s": round(cal_s, 2),
                    "calibrate_reported_s": cal.get("seconds"),
                    "calibrate_rows_per_s": cal.get("rows_per_second"),
                    "respond_wall_s": round(resp_s, 2),
                    "total_s": round(cal_s + resp_s, 2),
                    "respond_json_keys": sorted(json.loads(resp_out.strip().splitlines()[-1])),
                }
            )
    total = statistics.median(r["total_s"] for r in runs)
    return {
        "runs": runs,
        "total_s_median": round(total, 2),
        "target_s": TARGET_CLI_S,
        "target_met": total <= TARGET_CLI_S,
    }


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--items", type=int, default=32, help="harmful and benign turns each")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--batch", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 16]
    )
    parser.add_argument("--cli-repeats", type=int, default=2, help="end-to-end CLI runs (0: skip)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile-repeats", type=int, default=3, help="median of N passes")
    parser.add_argument(
        "--prototype-repeats", type=int, default=3, help="audio-dedup prototype rounds (0: skip)"
    )
    args = parser.parse_args()
    quiet_logs()

    from sarsteer_guard.calibration import CalibrationConfig, calibrate
    from sarsteer_guard.defaults import DEFAULT_BENIGN, DEFAULT_HARMFUL
    from sarsteer_guard.manifest import load_manifest
    from sarsteer_guard.models import load_model

    t0 = time.perf_counter()
    lm = load_model("tiny")
    load_s = time.perf_counter() - t0
    harmful = load_manifest(DEFAULT_HARMFUL)
    benign = load_manifest(DEFAULT_BENIGN)
    items = list(harmful.items[: args.items]) + list(benign.items[: args.items])
    n = len(items)
    _capture_time(lm, items[:8], 8)  # warm-up
    _capture_time(lm, items[:2], 1)

    result: dict[str, Any] = {
        "benchmark": "calibration_throughput",
        "machine": machine_info(),
        "model": "tiny",
        "model_load_s": round(load_s, 2),
        "turns": n,
        "rows_per_turn": 2,
        "repeats": args.repeats,
    }
    runs = interleaved(
        {f"batch_{b}": (lambda b=b: _capture_time(lm, items, b)) for b in args.batch},
        args.repeats,
        seed=3,
    )
    throughput: dict[str, Any] = {}
    base = statistics.median(runs[f"batch_{args.batch[0]}"])
    for b in args.batch:
        times = runs[f"batch_{b}"]
        med = statistics.median(times)
        throughput[f"batch_{b}"] = {
            "wall_s": summarize(times, scale=1.0),
            "turns_per_s": round(n / med, 2),
            f"speedup_vs_batch_{args.batch[0]}": ratio(base, med, 3),
        }
    result["throughput"] = throughput
    speedup8 = throughput.get("batch_8", {}).get(f"speedup_vs_batch_{args.batch[0]}")
    result["target_batched_speedup"] = TARGET_SPEEDUP
    result["batched_speedup_batch_8"] = speedup8
    result["target_met_batched"] = bool(speedup8 is not None and speedup8 >= TARGET_SPEEDUP)

    if not args.no_profile:
        profile: dict[str, Any] = {}
        for b in args.batch:
            passes = [_profile(lm, items, b) for _ in range(args.profile_repeats)]
            stages = {k: statistics.median(p[k] for p in passes) for k in passes[0]}
            total = stages["load_audio"] + stages["encode"] + stages["forward"]
            profile[f"batch_{b}"] = {
                "ms_per_turn": {k: round(v / n * 1000, 2) for k, v in stages.items()},
                "share_of_total": {
                    "load_audio": round(stages["load_audio"] / total, 3),
                    "encode (processor)": round(stages["encode"] / total, 3),
                    "  of which feature_extraction": round(stages["feature_extraction"] / total, 3),
                    "forward": round(stages["forward"] / total, 3),
                    "  of which audio_tower": round(stages["audio_tower"] / total, 3),
                    "  of which text_decoder_layers": round(
                        stages["text_decoder_layers"] / total, 3
                    ),
                },
            }
        result["profile"] = profile
        result["profile_note"] = (
            "per-stage medians over --profile-repeats passes. "
            "feature_extraction is timed separately on the same clips (each clip twice, as the "
            "processor sees it) and is part of encode; audio_tower and text_decoder_layers are "
            "part of forward. Every row's mel input is padded to 30 s (3000 frames)."
        )

    if args.prototype_repeats > 0:
        result["prototype_dedup_audio"] = _dedup_prototype(
            lm, items, args.prototype_repeats, [args.batch[0], 8]
        )

    t0 = time.perf_counter()
    full = calibrate(lm, harmful, benign, CalibrationConfig(batch_size=8), progress=False)
    result["full_shipped_set_in_process"] = {
        "turns": len(harmful.items) + len(benign.items),
        "seconds": round(time.perf_counter() - t0, 2),
        "rows_per_second": round(full.rows_per_second, 1),
    }
    clip = harmful.items[0].audio
    if args.cli_repeats > 0 and clip is not None:
        result["cli_calibrate_then_respond"] = _end_to_end(args.cli_repeats, clip)
    emit(result, args.out)


if __name__ == "__main__":
    main()
