"""Review console page times on a 10k-record audit log (SQLite and Redis); prints JSON.

Usage: python bench/bench_console.py [--records 10000] [--rounds 15] [--redis-url URL]
                                     [--backends sqlite,redis] [--out FILE]

A real console (uvicorn in a thread, as in production) over a seeded store; each page
is fetched over HTTP from loopback, cases interleaved per round, medians reported.
Every page view also appends an access event (that write is part of the time).

- ``cold_first_list_ms``: the first list page after start-up, which reads the whole log
  into the in-memory index; ``verify_ms``: a detail page whose chain check is stale (a
  whole-chain verification); the other pages run with a fresh chain check.
- SQLite is seeded by sealing records with the backend's own ``seal`` and inserting them
  in one transaction (appending 10k records one by one with ``synchronous=FULL`` takes
  ~40 s here and measures nothing about the console); Redis through ``append``. The
  seeded chain must verify before anything is timed.
"""

from __future__ import annotations

import http.client
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from _common import base_parser, emit, interleaved, machine_info, quiet_logs, summarize

from sarsteer_guard.audit import RedisAuditLog, SqliteAuditLog
from sarsteer_guard.audit.audio import split_audio
from sarsteer_guard.audit.base import time_key
from sarsteer_guard.audit.chain import ChainHead, seal
from sarsteer_guard.audit.record import AuditDraft, Detection
from sarsteer_guard.console.settings import ConsoleSettings
from sarsteer_guard.log import configure_logging
from sarsteer_guard.testing.audit import sample_draft
from sarsteer_guard.testing.console import ConsoleThread, console_in_thread, spoken_draft

RULES = ("weapons", "drugs", "self-harm", "fraud", "minors")
NOW = datetime.now(UTC)


def _draft(i: int) -> AuditDraft:
    return sample_draft(
        turn_id=f"t{i}",
        session_id=f"caller-{i % 400}",
        rule=RULES[i % len(RULES)],
        mode="shadow" if i % 7 == 0 else "enforce",
        policy_version=str(1 + i % 3),
        time=NOW - timedelta(minutes=5 * i),
        detector=Detection(keyword="I cannot", score=round((i % 100) / 100, 2)),
        response_text=f"I cannot assist with request {i} about topic {i % 97}.",
        context={"channel": "phone" if i % 2 else "web", "lang": "en"},
    )


def seed_sqlite(path: Path, n: int) -> str:
    """``n`` sealed records (the last with kept audio) in one transaction; returns its id."""
    with SqliteAuditLog(path) as log:
        log.open()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    head = ChainHead()
    drafts = [_draft(i) for i in range(n - 1)][::-1]
    drafts.append(spoken_draft("How do I make explosives?", "I cannot help.", time=NOW))
    for draft in drafts:
        draft, kept = split_audio(draft, None)
        record, text, head = seal(draft, head)
        conn.execute(
            "INSERT INTO audit_records(seq, id, time, session_id, policy_name, policy_version,"
            " rule, refused, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.seq, record.id, time_key(record.time), record.session_id, record.policy_name,
             record.policy_version, record.rule, int(record.refused), text),
        )  # fmt: skip
        if kept is not None:
            conn.execute(
                "INSERT INTO audit_audio(record_id, format, expires, data) VALUES (?, ?, ?, ?)",
                (kept.record_id, kept.format, time_key(kept.expires or NOW), kept.data),
            )
    conn.executemany(
        "UPDATE audit_meta SET value = ? WHERE key = ?",
        [(str(head.seq), "head_seq"), (head.hash, "head_hash"), (head.expiry, "head_expiry")],
    )
    conn.execute("COMMIT")
    conn.close()
    return record.id


def seed_redis(url: str, n: int) -> str:
    with RedisAuditLog.from_url(url) as log:
        for i in reversed(range(n - 1)):
            log.append(_draft(i))
        last = log.append(spoken_draft("How do I make explosives?", "I cannot help.", time=NOW))
    return last.id


def _get(base: str, path: str) -> float:
    host = base.split("://", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=120)
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - start
    conn.close()
    if response.status != 200 or not body:
        raise RuntimeError(f"GET {path} -> {response.status}")
    return elapsed


def measure(url: str, audio_id: str, rounds: int) -> dict[str, Any]:
    started = time.perf_counter()
    settings = ConsoleSettings(audit_url=url, verify_every_s=3600, page_size=50)
    out: dict[str, Any] = {}
    with console_in_thread(settings) as console:
        out["start_ms"] = round((time.perf_counter() - started) * 1000, 1)
        base = console.url
        out["cold_first_list_ms"] = round(_get(base, "/") * 1000, 1)
        out["first_verify_detail_ms"] = round(_get(base, f"/records/{audio_id}") * 1000, 1)
        report = console.console.chain.status().records
        if report is None or not report.ok or report.checked < 1:
            raise RuntimeError("the seeded chain does not verify")
        out["records_verified"] = report.checked
        cases: dict[str, Callable[[], float]] = {
            "list": lambda: _get(base, "/"),
            "list_page_20": lambda: _get(base, "/?page=20"),
            "list_search": lambda: _get(base, "/?q=topic+42"),
            "list_filtered": lambda: _get(
                base, "/?rule=weapons&score_min=0.5&context=channel%3Dphone&mode=enforce"
            ),
            "detail": lambda: _get(base, f"/records/{audio_id}"),
            "dashboard": lambda: _get(base, "/dashboard"),
            "audio": lambda: _get(base, f"/records/{audio_id}/audio"),
        }
        timings = interleaved(cases, rounds)
        out["pages_ms"] = {name: summarize(values) for name, values in timings.items()}
        verify = _verify_times(console, base, audio_id, max(3, rounds // 5))
        out["detail_with_fresh_verify_ms"] = summarize(verify)
    return out


def _verify_times(console: ConsoleThread, base: str, record_id: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        console.console.chain.max_age_s = 0.0  # every page re-verifies the whole chain
        times.append(_get(base, f"/records/{record_id}"))
    console.console.chain.max_age_s = 3600.0
    return times


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--backends", default="sqlite,redis")
    args = parser.parse_args()
    quiet_logs()
    configure_logging(level="WARNING")  # the console logs every request at info
    result: dict[str, Any] = {
        "benchmark": "console",
        "machine": machine_info(),
        "records": args.records,
        "rounds": args.rounds,
        "backends": {},
    }
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            seeded = time.perf_counter()
            if backend == "sqlite":
                url = str(Path(tmp) / "audit.db")
                audio_id = seed_sqlite(Path(url), args.records)
            else:
                prefix = f"bench:console:{uuid.uuid4().hex}"
                url = f"{args.redis_url}?prefix={prefix}"
                audio_id = seed_redis(url, args.records)
            seed_s = round(time.perf_counter() - seeded, 1)
            try:
                numbers = measure(url, audio_id, args.rounds)
            finally:
                if backend == "redis":
                    _drop(args.redis_url, prefix)
            result["backends"][backend] = {"seed_s": seed_s, **numbers}
    result["summary"] = {
        name: {
            page: data["pages_ms"][page]["median"]
            for page in ("list", "list_search", "detail", "dashboard")
        }
        | {"verify_detail_ms": data["detail_with_fresh_verify_ms"]["median"]}
        for name, data in result["backends"].items()
    }
    emit(result, args.out)


def _drop(url: str, prefix: str) -> None:
    raw = redis.Redis.from_url(url)
    keys = list(raw.scan_iter(match=f"{{{prefix}}}:*"))
    if keys:
        raw.delete(*keys)


if __name__ == "__main__":
    main()
