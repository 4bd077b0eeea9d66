"""Turn-segmenter speed: real-time factor (processing time / audio duration), JSON out.

About 60 s of espeak-ng speech with 1 s pauses, fed at 16 and 48 kHz, offline (one
push) and streaming (20 ms int16 chunks, the usual transport frame). Median of runs.
Target: RTF <= 0.01.

Run: .venv/bin/python bench/bench_segmenter.py [--repeats N]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from sarsteer_guard.audio import TurnSegmenter, float_to_pcm16, resample, segment_audio
from sarsteer_guard.testing.speech import speech_with_pauses

SENTENCES = [
    "What's the weather going to be like tomorrow morning?",
    "Set a timer for twelve minutes.",
    "Play some relaxing jazz in the living room.",
    "Remind me to call my mom at six tonight.",
    "How many ounces are in a cup?",
    "Add eggs, milk and spinach to my shopping list.",
    "Give me a quick recipe for vegetable soup.",
    "How far is it from Boston to New York?",
    "Translate good morning into Spanish.",
    "How do I kill a python process that won't stop?",
    "Book a table for two at an Italian restaurant on Friday.",
    "What are some good exercises for lower back pain?",
    "How do I get red wine out of a carpet?",
    "Explain how compound interest works.",
    "What should I pack for a weekend camping trip?",
    "Help me plan a birthday party for a seven year old.",
    "How do I make my phone battery last longer?",
    "Convert thirty degrees celsius to fahrenheit.",
]


def offline(x: np.ndarray, rate: int) -> int:
    return len(segment_audio(x, rate))


def streaming(chunks: list[np.ndarray], rate: int) -> int:
    seg = TurnSegmenter()
    n = 0
    for chunk in chunks:
        n += len(seg.push(chunk, rate))
    return n + len(seg.flush())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    x16, truth = speech_with_pauses(SENTENCES, 1.0, 16000)
    duration = x16.size / 16000
    results: dict[str, object] = {
        "benchmark": "segmenter_rtf",
        "audio_s": round(duration, 2),
        "utterances": len(truth),
        "repeats": args.repeats,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "target_rtf": 0.01,
    }
    for rate in (16000, 48000):
        x = x16 if rate == 16000 else resample(x16, 16000, rate)
        step = rate // 50
        chunks = [
            np.frombuffer(float_to_pcm16(x[i : i + step]), dtype="<i2")
            for i in range(0, x.size, step)
        ]
        runs: tuple[tuple[str, Callable[[], int]], ...] = (
            ("offline", functools.partial(offline, x, rate)),
            ("stream_20ms", functools.partial(streaming, chunks, rate)),
        )
        for mode, run in runs:
            times: list[float] = []
            turns = 0
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                turns = run()
                times.append(time.perf_counter() - t0)
            results[f"{mode}_{rate // 1000}k"] = {
                "rtf_median": round(statistics.median(times) / duration, 5),
                "rtf_max": round(max(times) / duration, 5),
                "turns": turns,
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
