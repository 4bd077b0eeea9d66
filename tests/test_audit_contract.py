"""One contract suite for every AuditLog backend: SQLite, Redis Streams, in-memory capture."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from sarsteer_guard.audit import (
    GENESIS_HASH,
    AuditLog,
    RedisAuditLog,
    SqliteAuditLog,
    open_audit_log,
)
from sarsteer_guard.audit.record import chain_hash
from sarsteer_guard.errors import AuditChainError
from sarsteer_guard.testing.audit import CapturingAuditLog, sample_draft

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@dataclass
class Backend:
    """A log plus raw access to its storage, to tamper with it like an attacker would."""

    log: AuditLog
    # Each mutator receives the list of stored JSON dicts in storage order and edits it.
    tamper: Callable[[Callable[[list[dict[str, Any]]], object]], None]
    new_handle: Callable[[], AuditLog]


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "audit.db"
    log = SqliteAuditLog(path)

    def tamper(mutate: Callable[[list[dict[str, Any]]], object]) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("DROP TRIGGER IF EXISTS audit_records_append_only")
        rows = conn.execute("SELECT seq, data FROM audit_records ORDER BY seq").fetchall()
        slots = [seq for seq, _ in rows]
        items = [json.loads(data) for _, data in rows]
        mutate(items)
        conn.execute("BEGIN")
        conn.execute("DELETE FROM audit_records")
        for slot, item in zip(slots, items, strict=False):
            conn.execute(
                "INSERT INTO audit_records(seq, id, time, session_id, policy_name, policy_version,"
                " rule, refused, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (slot, item["id"], item["time"], item["session_id"],
                 item["policy_name"], item["policy_version"], item["rule"],
                 int(item["refused"]), json.dumps(item)),
            )  # fmt: skip
        conn.execute("COMMIT")
        conn.close()

    return Backend(log, tamper, lambda: SqliteAuditLog(path))


def _redis_backend(prefix: str) -> Backend:
    log = RedisAuditLog(REDIS_URL, prefix=prefix)
    raw = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    stream = log.keys[0]

    def tamper(mutate: Callable[[list[dict[str, Any]]], object]) -> None:
        entries = cast(list[tuple[str, dict[str, str]]], raw.xrange(stream))
        ids = [sid for sid, _ in entries]
        items = [json.loads(fields["data"]) for _, fields in entries]
        mutate(items)
        raw.delete(stream)
        for sid, item in zip(ids, items, strict=False):
            raw.xadd(
                stream,
                {"seq": item["seq"], "id": item["id"], "hash": item["hash"],
                 "data": json.dumps(item)},
                id=sid,
            )  # fmt: skip

    return Backend(log, tamper, lambda: RedisAuditLog(REDIS_URL, prefix=prefix))


def _capture_backend() -> Backend:
    log = CapturingAuditLog()

    def tamper(mutate: Callable[[list[dict[str, Any]]], object]) -> None:
        items = [json.loads(t) for t in log.stored]
        mutate(items)
        log.stored[:] = [json.dumps(i) for i in items]

    return Backend(log, tamper, lambda: log)


@pytest.fixture(params=["sqlite", "redis", "capture"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = _sqlite_backend(tmp_path)
        yield b
        b.log.close()
    elif request.param == "redis":
        prefix = f"test:audit:{uuid.uuid4().hex}"
        b = _redis_backend(prefix)
        yield b
        b.log.close()
        raw = redis.Redis.from_url(REDIS_URL)
        keys = list(raw.scan_iter(match=f"{{{prefix}}}:*"))
        if keys:
            raw.delete(*keys)
        raw.close()
    else:
        yield _capture_backend()


def _fill(log: AuditLog, n: int, **overrides: Any) -> list[Any]:
    return [
        log.append(sample_draft(turn_id=f"t{i}", time=T0 + timedelta(minutes=i), **overrides))
        for i in range(n)
    ]


def test_append_seals_a_linear_chain(backend: Backend) -> None:
    records = _fill(backend.log, 5)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS_HASH
    for prev, cur in itertools.pairwise(records):
        assert cur.prev_hash == prev.hash
    for r in records:
        assert r.hash == chain_hash(r.prev_hash, r.to_json_dict())
    report = backend.log.verify()
    assert report.ok, report.summary()
    assert report.checked == 5
    assert report.summary() == "chain intact: 5 records"


def test_iter_get_and_filters(backend: Backend) -> None:
    log = backend.log
    log.append(sample_draft(turn_id="a", session_id="s1", time=T0, rule="weapons"))
    log.append(
        sample_draft(turn_id="b", session_id="s2", time=T0 + timedelta(hours=1), rule="drugs")
    )
    log.append(
        sample_draft(
            turn_id="c",
            session_id="s1",
            time=T0 + timedelta(hours=2),
            policy_version="2",
            rule=None,
            refused=False,
        )
    )

    def turns(**kw: Any) -> list[str]:
        return [r.turn_id for r in log.iter(**kw)]

    assert turns() == ["a", "b", "c"]
    assert turns(session="s1") == ["a", "c"]
    assert turns(rule="drugs") == ["b"]
    assert turns(refused=False) == ["c"]
    assert turns(policy="default") == ["a", "b", "c"]
    assert turns(policy="default@2") == ["c"]
    assert turns(since=T0 + timedelta(minutes=30)) == ["b", "c"]
    assert turns(until=T0 + timedelta(hours=1)) == ["a"]
    assert turns(since=T0, until=T0 + timedelta(hours=2), session="s1") == ["a"]
    first = next(log.iter())
    got = log.get(first.id)
    assert got == first
    assert log.get("no-such-id") is None


def test_append_is_idempotent_by_id(backend: Backend) -> None:
    draft = sample_draft()
    first = backend.log.append(draft)
    again = backend.log.append(draft)
    assert first == again
    assert len(list(backend.log.iter())) == 1


def test_record_survives_reopen(backend: Backend) -> None:
    record = backend.log.append(sample_draft(context={"k": [1, 2.5, "x"]}))
    assert record is not None
    other = backend.new_handle()
    try:
        assert other.get(record.id) == record
        nxt = other.append(sample_draft(turn_id="second"))
        assert nxt is not None
        assert nxt.seq == 2
        assert nxt.prev_hash == record.hash
    finally:
        if other is not backend.log:
            other.close()


def test_edited_record_is_detected(backend: Backend) -> None:
    records = _fill(backend.log, 5)

    def edit(items: list[dict[str, Any]]) -> None:
        items[2]["response_text"] = "Sure, here is how..."

    backend.tamper(edit)
    report = backend.log.verify()
    assert not report.ok
    assert report.first_break is not None
    assert report.first_break.kind == "edited"
    assert report.first_break.seq == 3
    assert report.first_break.record_id == records[2].id
    assert report.checked == 2
    with pytest.raises(AuditChainError, match="edited at seq 3"):
        report.raise_for_break()


def test_edited_and_rehashed_record_is_detected(backend: Backend) -> None:
    records = _fill(backend.log, 5)

    def edit(items: list[dict[str, Any]]) -> None:
        items[1]["refused"] = False
        items[1]["hash"] = chain_hash(items[1]["prev_hash"], items[1])

    backend.tamper(edit)
    brk = backend.log.verify().first_break
    assert brk is not None
    assert (brk.kind, brk.seq, brk.record_id) == ("edited", 2, records[1].id)


def test_removed_record_is_detected(backend: Backend) -> None:
    _fill(backend.log, 5)
    backend.tamper(lambda items: items.pop(2))
    brk = backend.log.verify().first_break
    assert brk is not None
    assert (brk.kind, brk.seq) == ("removed", 3)


def test_removed_tail_is_detected(backend: Backend) -> None:
    _fill(backend.log, 5)
    backend.tamper(lambda items: items.pop())
    brk = backend.log.verify().first_break
    assert brk is not None
    assert (brk.kind, brk.seq) == ("removed", 5)


def test_reordered_pair_is_detected(backend: Backend) -> None:
    _fill(backend.log, 5)

    def swap(items: list[dict[str, Any]]) -> None:
        items[2], items[3] = items[3], items[2]

    backend.tamper(swap)
    brk = backend.log.verify().first_break
    assert brk is not None
    assert brk.kind == "reordered"
    assert brk.seq == 3


def test_prune_keeps_verify_green(backend: Backend) -> None:
    log = backend.log
    old = _fill(log, 4, retention_until=T0 + timedelta(days=1))
    keep = _fill(log, 3, retention_until=T0 + timedelta(days=400))
    assert log.prune(T0 + timedelta(days=30)) == 4
    report = log.verify()
    assert report.ok, report.summary()
    assert (report.checkpoint_seq, report.checked) == (4, 3)
    assert [r.id for r in log.iter()] == [r.id for r in keep]
    assert log.get(old[0].id) is None
    after = log.append(sample_draft(turn_id="after"))
    assert after is not None
    assert after.seq == 8
    assert log.verify().ok
    # Nothing more is expired: pruning again is a no-op.
    assert log.prune(T0 + timedelta(days=30)) == 0


def test_prune_stops_at_first_unexpired_record(backend: Backend) -> None:
    log = backend.log
    _fill(log, 2, retention_until=T0)
    _fill(log, 1)  # no retention: kept until policy says otherwise
    _fill(log, 2, retention_until=T0)
    assert log.prune(T0 + timedelta(days=1)) == 2
    assert log.verify().ok
    assert len(list(log.iter())) == 3


def test_removing_first_record_after_prune_is_detected(backend: Backend) -> None:
    _fill(backend.log, 2, retention_until=T0)
    _fill(backend.log, 3)
    backend.log.prune(T0 + timedelta(days=1))
    backend.tamper(lambda items: items.pop(0))
    brk = backend.log.verify().first_break
    assert brk is not None
    assert (brk.kind, brk.seq) == ("removed", 3)


def test_concurrent_appenders_keep_one_chain(backend: Backend) -> None:
    handles = [backend.new_handle() for _ in range(4)]
    errors: list[BaseException] = []

    def work(log: AuditLog, k: int) -> None:
        try:
            for i in range(20):
                log.append(sample_draft(turn_id=f"w{k}-{i}"))
        except BaseException as error:  # surfaced by the assert below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(h, k)) for k, h in enumerate(handles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in handles:
        if h is not backend.log:
            h.close()
    assert not errors
    records = list(backend.log.iter())
    assert [r.seq for r in records] == list(range(1, 81))
    assert len({r.turn_id for r in records}) == 80
    report = backend.log.verify()
    assert report.ok, report.summary()
    assert report.checked == 80


def test_sqlite_two_processes_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    code = (
        "import sys\n"
        "from sarsteer_guard.audit import SqliteAuditLog\n"
        "from sarsteer_guard.testing.audit import sample_draft\n"
        "with SqliteAuditLog(sys.argv[1]) as log:\n"
        "    for i in range(40):\n"
        "        log.append(sample_draft(turn_id=f'{sys.argv[2]}-{i}'))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path), name]) for name in ("p1", "p2")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    with SqliteAuditLog(path) as log:
        records = list(log.iter())
        assert [r.seq for r in records] == list(range(1, 81))
        assert log.verify().ok
    # both processes really interleaved or not, every record of each is there, in its order
    for name in ("p1", "p2"):
        mine = [r.turn_id for r in records if r.turn_id.startswith(name)]
        assert mine == [f"{name}-{i}" for i in range(40)]


def test_sqlite_is_append_only_at_the_storage_level(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        log.append(sample_draft())
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit_records SET data = '{}'")
    conn.close()


def test_redis_max_len_trims_and_keeps_verify_green() -> None:
    prefix = f"test:audit:{uuid.uuid4().hex}"
    log = RedisAuditLog(REDIS_URL, prefix=prefix, max_len=10)
    raw = redis.Redis.from_url(REDIS_URL)
    try:
        for i in range(40):
            log.append(sample_draft(turn_id=f"t{i}"))
        length = raw.xlen(log.keys[0])
        assert 10 <= length <= 11  # approximate: trimmed in batches of max(1, 1%)
        report = log.verify()
        assert report.ok, report.summary()
        assert report.checkpoint_seq == 40 - length
        assert raw.hlen(log.keys[2]) == length
    finally:
        log.close()
        raw.delete(*log.keys)
        raw.close()


def test_redis_max_age_prunes_old_records() -> None:
    prefix = f"test:audit:{uuid.uuid4().hex}"
    url = f"{REDIS_URL}?prefix={prefix}&max_age_days=7"
    log = RedisAuditLog.from_url(url)
    try:
        assert (log.prefix, log.max_age) == (prefix, timedelta(days=7))
        for i in range(6):
            log.append(sample_draft(turn_id=f"t{i}", time=T0 + timedelta(days=i)))
        assert log.prune(T0 + timedelta(days=10)) == 4  # days 0..3 are older than 7 days
        assert [r.turn_id for r in log.iter()] == ["t4", "t5"]
        assert log.verify().ok
    finally:
        log.close()
        raw = redis.Redis.from_url(REDIS_URL)
        raw.delete(*log.keys)
        raw.close()


def test_open_audit_log_resolves_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sarsteer_guard.audit import SpooledAuditLog
    from sarsteer_guard.errors import AuditError

    log = open_audit_log(f"sqlite:///{tmp_path}/a.db", create=False)  # a reader: no spool
    assert isinstance(log, SqliteAuditLog)
    assert log.path == tmp_path / "a.db"
    assert not log.path.exists()  # no I/O before first use
    assert isinstance(open_audit_log(str(tmp_path / "b.db"), create=False), SqliteAuditLog)
    red = open_audit_log("redis://127.0.0.1:6379/0?prefix=x", spool_dir=tmp_path / "spool")
    assert isinstance(red, SpooledAuditLog)
    assert isinstance(red.inner, RedisAuditLog)
    assert red.inner.prefix == "x"
    monkeypatch.setenv("SARSTEER_AUDIT_URL", f"sqlite:///{tmp_path}/env.db")
    env_log = open_audit_log(None, create=False)
    assert isinstance(env_log, SqliteAuditLog)
    assert env_log.path == tmp_path / "env.db"
    monkeypatch.delenv("SARSTEER_AUDIT_URL")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    default = open_audit_log(None, create=False)
    assert isinstance(default, SqliteAuditLog)
    assert default.path == tmp_path / "state" / "sarsteer-guard" / "audit.db"
    with pytest.raises(AuditError, match="unsupported audit store"):
        open_audit_log("mongodb://x")
    for closable in (log, red, env_log, default):
        closable.close()
        closable.close()  # idempotent
