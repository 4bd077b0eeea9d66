"""Audit append throughput (records/s) to Redis Streams and SQLite; prints JSON.

Usage: python bench/bench_audit.py [--n 1000] [--redis-url URL]

Cases: one appender; 4 threads sharing one log (a guard process); 4 threads with a
log each (replicas racing on the chain head: exercises the compare-and-set retries).
Every case ends with verify() so a fast-but-forked chain cannot look good.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from sarsteer_guard.audit import AuditLog, RedisAuditLog, SpooledAuditLog, SqliteAuditLog
from sarsteer_guard.testing.audit import sample_draft


def _run(logs: list[AuditLog], n: int) -> float:
    per = n // len(logs)
    drafts = [[sample_draft(turn_id=f"w{k}-{i}") for i in range(per)] for k in range(len(logs))]

    def work(k: int) -> None:
        for draft in drafts[k]:
            logs[k].append(draft)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(logs))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    report = logs[0].verify()
    if not report.ok or report.checked != per * len(logs):
        raise SystemExit(f"chain check failed: {report.summary()}")
    return round(per * len(logs) / elapsed, 1)


def _case(make: Callable[[], Callable[[], AuditLog]], shared: bool, threads: int, n: int) -> float:
    """Median of 3 runs, each on a fresh log (connections warmed by a few appends)."""
    rates = []
    for _ in range(3):
        factory = make()
        first = factory()
        logs = [first] * threads if shared else [first, *(factory() for _ in range(threads - 1))]
        try:
            for log in set(logs):
                log.verify()  # opens connections / loads nothing into the chain
            rates.append(_run(logs, n))
        finally:
            for log in set(logs):
                log.close()
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    results: dict[str, object] = {
        "n_per_run": args.n,
        "runs_per_case": 3,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "redis_server": redis.Redis.from_url(args.redis_url).info("server")["redis_version"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        prefixes: list[str] = []

        def redis_log() -> Callable[[], AuditLog]:
            prefix = f"bench:audit:{uuid.uuid4().hex}"
            prefixes.append(prefix)
            return lambda: RedisAuditLog(args.redis_url, prefix=prefix)

        def spooled_log() -> Callable[[], AuditLog]:
            inner = redis_log()  # one spool directory per process (here: per log)
            return lambda: SpooledAuditLog(inner(), Path(tmp) / uuid.uuid4().hex)

        def sqlite_log() -> Callable[[], AuditLog]:
            path = Path(tmp) / f"{uuid.uuid4().hex}.db"
            return lambda: SqliteAuditLog(path)

        cases = {
            "redis": redis_log,
            "redis_spooled": spooled_log,
            "sqlite": sqlite_log,
        }
        try:
            for name, make in cases.items():
                results[f"{name}_1_appender_rps"] = _case(make, True, 1, args.n)
                results[f"{name}_4_threads_shared_rps"] = _case(make, True, 4, args.n)
                results[f"{name}_4_threads_separate_logs_rps"] = _case(make, False, 4, args.n)
        finally:
            raw = redis.Redis.from_url(args.redis_url)
            for prefix in prefixes:
                raw.delete(*RedisAuditLog(prefix=prefix).keys)
            raw.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
