"""Shared helpers for the benchmarks: timing, medians, percentiles, JSON out with machine info.

Benchmarks here share 2 CPU cores with other work, so run-to-run noise is 5-10%: every
comparison is made inside one process, the cases interleaved in a shuffled order each
round, and reported as medians (plus spread) rather than single runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of a non-empty sample."""
    if not samples:
        raise ValueError("percentile of an empty sample")
    xs = sorted(samples)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(
    samples: Sequence[float], *, scale: float = 1000.0, digits: int = 3
) -> dict[str, Any]:
    """Median, p10/p90, min, max and count of ``samples`` (seconds) in ``scale`` units (ms)."""
    xs = [s * scale for s in samples]
    return {
        "median": round(statistics.median(xs), digits),
        "p10": round(percentile(xs, 10), digits),
        "p90": round(percentile(xs, 90), digits),
        "min": round(min(xs), digits),
        "max": round(max(xs), digits),
        "n": len(xs),
    }


def latency_summary(samples_s: Sequence[float]) -> dict[str, Any]:
    """p50/p95/mean/max in milliseconds of latencies given in seconds."""
    ms = [s * 1000 for s in samples_s]
    return {
        "p50_ms": round(percentile(ms, 50), 1),
        "p95_ms": round(percentile(ms, 95), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
        "max_ms": round(max(ms), 1),
        "n": len(ms),
    }


def ratio(a: float, b: float, digits: int = 4) -> float | None:
    """``a / b`` rounded, or None when ``b`` is zero."""
    return round(a / b, digits) if b else None


def interleaved(
    cases: Mapping[str, Callable[[], Any]],
    repeats: int,
    *,
    seed: int = 0,
    on_result: Callable[[str, Any], None] | None = None,
) -> dict[str, list[Any]]:
    """Run every case ``repeats`` times, in a fresh shuffled order each round.

    Each case returns its own measurement (seconds or a dict); neighbour noise and thermal
    drift then hit all cases alike, and medians over rounds compare them fairly.
    """
    rng = random.Random(seed)  # noqa: S311 - shuffling run order, not security
    names = list(cases)
    out: dict[str, list[Any]] = {name: [] for name in names}
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            value = cases[name]()
            out[name].append(value)
            if on_result is not None:
                on_result(name, value)
    return out


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """Where the numbers came from: interpreter, libraries, CPUs, load, accelerator, commit."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }
    with suppress(OSError):
        info["loadavg_1m_at_start"] = round(os.getloadavg()[0], 2)
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def base_parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser with the common ``--out FILE`` option."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return parser


def emit(result: dict[str, Any], out: Path | None) -> None:
    """Print the result as one JSON object on stdout (and write it to ``out``)."""
    text = json.dumps(result, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def quiet_logs() -> None:
    """Keep library info logs and progress bars out of the benchmark's output (stderr only)."""
    os.environ.setdefault("SARSTEER_LOG_LEVEL", "WARNING")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
