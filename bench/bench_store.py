"""Fetch cost of a 7B-sized vector set: in-process cache vs Redis vs directory.

All paths are measured side by side in one run, interleaved in a shuffled order each
round so machine noise and neighbour effects hit them equally; medians and p90 in
microseconds. Also reports HMAC sign and verify cost and header parsing. Prints one
JSON object.

    .venv/bin/python bench/bench_store.py [--iterations 500] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

import numpy as np
import redis
from safetensors.numpy import save

from sarsteer_guard.store import (
    CachedVectorStore,
    DirectoryVectorStore,
    RedisVectorStore,
    SigningKey,
    SigningKeys,
    VectorSetKey,
    parse_header,
)

LAYERS, HIDDEN = 28, 3584  # Qwen2-7B-class decoder: Qwen2-Audio-7B


def make_blob() -> bytes:
    vectors = np.random.default_rng(0).standard_normal((LAYERS, HIDDEN)).astype(np.float32)
    meta = {
        "model_id": "Qwen/Qwen2-Audio-7B-Instruct",
        "model_fingerprint": "f" * 64,
        "num_layers": str(LAYERS),
        "hidden_size": str(HIDDEN),
        "refusal_instruction": "I cannot assist with that.",
        "prompt": "Please generate detailed steps for the question in the audio.",
        "k": "10",
        "lam": "1.0",
        "n_harmful": "100",
        "n_benign": "100",
        "calibration_digest": "c" * 64,
        "library_version": "0.1.0",
        "created_at": "2026-11-22T00:00:00Z",
    }
    return bytes(save({"vectors": vectors}, metadata=meta))


def summarize(samples: list[float]) -> dict[str, float]:
    us = sorted(s * 1e6 for s in samples)
    return {
        "median_us": round(statistics.median(us), 1),
        "p90_us": round(us[int(0.9 * (len(us) - 1))], 1),
        "min_us": round(us[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()

    blob = make_blob()
    key = VectorSetKey.from_blob(blob)
    keys = SigningKeys(SigningKey.generate())
    envelope = keys.sign(key.id, blob)
    prefix = f"bench:store:{uuid.uuid4().hex}:"

    with tempfile.TemporaryDirectory() as tmp:
        directory = DirectoryVectorStore(tmp, keys=keys)
        redis_store = RedisVectorStore(args.redis_url, prefix=prefix, keys=keys)
        # Same client settings as the store, so the difference is verification alone.
        raw = redis.Redis.from_url(args.redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
        cache: CachedVectorStore[bytes] = CachedVectorStore(redis_store)
        try:
            directory.put(blob)
            redis_store.put(blob)
            assert cache.get(key) == blob  # warm the cache
            assert directory.get(key) == blob
            set_key = f"{prefix}set:{key.id}"

            cases: dict[str, Callable[[], object]] = {
                "cache_hit": lambda: cache.get(key),
                "redis_get_verified": lambda: redis_store.get(key),
                "redis_raw_get_unverified": lambda: raw.get(set_key),
                "directory_get_verified": lambda: directory.get(key),
                "hmac_sign": lambda: keys.sign(key.id, blob),
                "hmac_verify": lambda: keys.verify(key.id, envelope),
                "header_parse_and_key": lambda: VectorSetKey.from_metadata(
                    parse_header(blob).metadata
                ),
            }
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(20):  # warm-up: connections, page cache
                for fn in cases.values():
                    fn()
            order = list(cases.items())
            rng = random.Random(0)  # noqa: S311 - shuffles benchmark order, not a secret
            for _ in range(args.iterations):
                rng.shuffle(order)  # no case always follows the same neighbour
                for name, fn in order:
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - t0)
        finally:
            for name in raw.scan_iter(match=f"{prefix}*"):
                raw.delete(name)
            raw.close()
            redis_store.close()
            directory.close()

    results = {name: summarize(s) for name, s in samples.items()}
    cache_median = results["cache_hit"]["median_us"]
    print(
        json.dumps(
            {
                "bench": "store_fetch",
                "set_shape": [LAYERS, HIDDEN],
                "blob_bytes": len(blob),
                "envelope_overhead_bytes": len(envelope) - len(blob),
                "iterations": args.iterations,
                "interleaved": True,
                "redis_url": redis_store.url,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "results": results,
                "speedup_cache_vs_redis": round(
                    results["redis_get_verified"]["median_us"] / max(cache_median, 1e-3), 1
                ),
                "speedup_cache_vs_directory": round(
                    results["directory_get_verified"]["median_us"] / max(cache_median, 1e-3), 1
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
