"""Audit append throughput (records/s) to Redis Streams and SQLite; prints JSON.

Usage: python bench/bench_audit.py [--n 1000] [--redis-url URL] [--out FILE]

Cases: one appender; 4 threads sharing one log (a guard process); 4 threads with a
log each (replicas racing on the chain head: exercises the compare-and-set retries).
Every case ends with verify() so a fast-but-forked chain cannot look good.
``sqlite_spooled`` is what the Guard opens by default (SQLite behind the spool).

What checkpoint authentication costs: ``prune_ms`` prunes ``--n`` expired records with
and without ``SARSTEER_AUDIT_KEY`` (one HMAC per prune step), ``checkpoint_sign_us``
signs one checkpoint, and ``verify_rps`` is verification speed (keyed).
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

from sarsteer_guard.audit import (
    AuditKeys,
    AuditLog,
    RedisAuditLog,
    SpooledAuditLog,
    SqliteAuditLog,
)
from sarsteer_guard.audit.checkpoint import Checkpoint
from sarsteer_guard.audit.keys import decode_key
from sarsteer_guard.audit.record import utcnow
from sarsteer_guard.testing.audit import sample_draft

KEY = AuditKeys(decode_key("5a" * 32, source="bench key"))


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


def _prune_ms(make: Callable[[AuditKeys | None], AuditLog], n: int) -> dict[str, float]:
    """Median time to prune ``n`` expired records, keyless and keyed (fresh log each run)."""
    out: dict[str, float] = {}
    for label, keys in (("keyless", None), ("keyed", KEY)):
        times = []
        for _ in range(3):
            log = make(keys)
            try:
                for i in range(n):
                    log.append(sample_draft(turn_id=f"p{i}", retention_until=utcnow()))
                log.append(sample_draft(turn_id="kept"))  # shows the prefix had expired
                start = time.perf_counter()
                assert log.prune() == n
                times.append((time.perf_counter() - start) * 1000)
                report = log.verify()
                if not report.ok:
                    raise SystemExit(f"prune left a broken chain: {report.summary()}")
            finally:
                log.close()
        out[label] = round(statistics.median(times), 2)
    return out


def _sign_us() -> float:
    checkpoint = Checkpoint(seq=12345, hash="ab" * 32, time=utcnow(), removed=1000)
    start = time.perf_counter()
    for _ in range(2000):
        checkpoint.signed(KEY)
    return round((time.perf_counter() - start) / 2000 * 1e6, 2)


def _verify_rps(make: Callable[[AuditKeys | None], AuditLog], n: int) -> float:
    log = make(KEY)
    try:
        for i in range(n):
            log.append(sample_draft(turn_id=f"v{i}"))
        start = time.perf_counter()
        report = log.verify()
        elapsed = time.perf_counter() - start
    finally:
        log.close()
    if not report.ok:
        raise SystemExit(f"verify failed: {report.summary()}")
    return round(n / elapsed, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
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

        def sqlite_spooled() -> Callable[[], AuditLog]:
            inner = sqlite_log()
            return lambda: SpooledAuditLog(inner(), Path(tmp) / uuid.uuid4().hex)

        def keyed_redis(keys: AuditKeys | None) -> AuditLog:
            prefix = f"bench:audit:{uuid.uuid4().hex}"
            prefixes.append(prefix)
            return RedisAuditLog(args.redis_url, prefix=prefix, keys=keys)

        def keyed_sqlite(keys: AuditKeys | None) -> AuditLog:
            return SqliteAuditLog(Path(tmp) / f"{uuid.uuid4().hex}.db", keys=keys)

        cases = {
            "redis": redis_log,
            "redis_spooled": spooled_log,
            "sqlite": sqlite_log,
            "sqlite_spooled": sqlite_spooled,
        }
        try:
            for name, make in cases.items():
                results[f"{name}_1_appender_rps"] = _case(make, True, 1, args.n)
                results[f"{name}_4_threads_shared_rps"] = _case(make, True, 4, args.n)
                results[f"{name}_4_threads_separate_logs_rps"] = _case(make, False, 4, args.n)
            for name, made in (("redis", keyed_redis), ("sqlite", keyed_sqlite)):
                results[f"{name}_prune_{args.n}_ms"] = _prune_ms(made, args.n)
                results[f"{name}_verify_rps"] = _verify_rps(made, args.n)
            results["checkpoint_sign_us"] = _sign_us()
        finally:
            raw = redis.Redis.from_url(args.redis_url)
            for prefix in prefixes:
                raw.delete(*RedisAuditLog(prefix=prefix).keys)
            raw.close()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
