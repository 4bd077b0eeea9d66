"""Spool: nothing is lost while Redis is down, across a guard restart; a full spool refuses."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sarsteer_guard.audit import RedisAuditLog, SpooledAuditLog, SpoolFullError
from sarsteer_guard.errors import StoreUnavailableError
from sarsteer_guard.testing.audit import sample_draft

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A throwaway redis-server with AOF (fsync always) in a temp dir, killable and restartable."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--daemonize", "no", "--logfile", str(self.workdir / "redis.log")],
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisProcess(workdir)
    server.start()
    yield server
    server.kill()


def _spooled(
    url: str, spool: Path, *, max_bytes: int = 1 << 20, flush_interval_s: float | None
) -> SpooledAuditLog:
    inner = RedisAuditLog(url, prefix="spooltest", socket_timeout_s=1.0)
    return SpooledAuditLog(inner, spool, max_bytes, flush_interval_s=flush_interval_s)


def test_outage_and_guard_restart_lose_nothing(redis_proc: RedisProcess, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    log = _spooled(redis_proc.url, spool, flush_interval_s=None)
    turn = iter(range(50))

    for _ in range(20):
        assert log.append(sample_draft(turn_id=f"t{next(turn):02d}")) is not None

    redis_proc.kill()  # outage mid-stream
    for _ in range(15):
        assert log.append(sample_draft(turn_id=f"t{next(turn):02d}")) is None
    assert log.pending() == 15
    with pytest.raises(StoreUnavailableError):
        log.flush()

    log.close()  # the guard restarts while Redis is still down
    log = _spooled(redis_proc.url, spool, flush_interval_s=None)
    assert log.pending() == 15
    for _ in range(5):
        assert log.append(sample_draft(turn_id=f"t{next(turn):02d}")) is None
    assert log.pending() == 20

    redis_proc.start()  # Redis comes back with its AOF
    for _ in range(10):
        assert log.append(sample_draft(turn_id=f"t{next(turn):02d}")) is not None
    assert log.pending() == 0
    assert log.replayed == 20

    records = list(log.iter())
    assert [r.turn_id for r in records] == [f"t{i:02d}" for i in range(50)]
    assert [r.seq for r in records] == list(range(1, 51))
    report = log.verify()
    assert report.ok, report.summary()
    assert report.checked == 50
    log.close()


def test_background_flush_replays_after_restart(redis_proc: RedisProcess, tmp_path: Path) -> None:
    log = _spooled(redis_proc.url, tmp_path / "spool", flush_interval_s=0.1)
    log.append(sample_draft(turn_id="before"))
    redis_proc.kill()
    log.append(sample_draft(turn_id="during-1"))
    log.append(sample_draft(turn_id="during-2"))
    redis_proc.start()
    deadline = time.monotonic() + 15
    while log.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.pending() == 0
    assert [r.turn_id for r in log.iter()] == ["before", "during-1", "during-2"]
    assert log.verify().ok
    log.close()
    log.close()


def test_full_spool_refuses_with_a_clear_error(tmp_path: Path) -> None:
    down = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    draft_size = len(sample_draft().model_dump_json())
    log = _spooled(down, tmp_path / "spool", max_bytes=3 * draft_size + 10, flush_interval_s=None)
    for i in range(3):
        assert log.append(sample_draft(turn_id=f"t{i}")) is None
    with pytest.raises(SpoolFullError, match=r"spool .* is full .* was NOT written"):
        log.append(sample_draft(turn_id="t3"))
    assert log.rejected == 1
    assert log.pending() == 3
    log.close()


def test_damaged_spool_line_is_quarantined_not_blocking(
    redis_proc: RedisProcess, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    log = _spooled(redis_proc.url, spool, flush_interval_s=None)
    redis_proc.kill()
    for i in range(3):
        assert log.append(sample_draft(turn_id=f"t{i}")) is None
    conn = sqlite3.connect(spool / "audit-spool.db")
    conn.execute("UPDATE spool SET data = '{\"broken\": ' WHERE n = 2")
    conn.commit()
    conn.close()
    redis_proc.start()
    log.flush()
    assert log.pending() == 0
    assert log.quarantined == 1
    assert [r.turn_id for r in log.iter()] == ["t0", "t2"]
    assert log.verify().ok
    log.close()


# -- issue #10 E: a crashed process's spool is replayed when the next one starts --------
_CRASH = """
import os, sys
from pathlib import Path
from sarsteer_guard.audit import RedisAuditLog, SpooledAuditLog
from sarsteer_guard.testing.audit import sample_draft
inner = RedisAuditLog(sys.argv[1], prefix="spooltest", socket_timeout_s=1.0)
log = SpooledAuditLog(inner, Path(sys.argv[2]), flush_interval_s=None)
for i in range(int(sys.argv[3])):
    assert log.append(sample_draft(turn_id=f"crashed-{i}")) is None
os._exit(0)  # a crash: no close(), the drafts stay in the spool file
"""


def _crash_with_spooled(url: str, spool: Path, n: int) -> None:
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _CRASH, url, str(spool), str(n)], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()


def _stream_len(url: str) -> int:
    raw = redis.Redis.from_url(url)
    try:
        return int(raw.xlen("{spooltest}:stream"))
    finally:
        raw.close()


def test_spool_of_a_crashed_process_is_replayed_at_start(
    redis_proc: RedisProcess, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    redis_proc.kill()
    _crash_with_spooled(redis_proc.url, spool, 3)
    redis_proc.start()
    log = _spooled(redis_proc.url, spool, flush_interval_s=None)
    assert log.pending() == 0  # the first use replayed them: no new record was needed
    assert _stream_len(redis_proc.url) == 3
    assert [r.turn_id for r in log.iter()] == ["crashed-0", "crashed-1", "crashed-2"]
    assert log.verify().ok
    log.close()


def test_spool_replays_in_the_background_when_the_backend_returns(
    redis_proc: RedisProcess, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    redis_proc.kill()
    _crash_with_spooled(redis_proc.url, spool, 2)
    log = _spooled(redis_proc.url, spool, flush_interval_s=0.1)
    log.open()  # the guard starts while Redis is still down: no error, replay waits
    assert log.pending() == 2
    redis_proc.start()
    deadline = time.monotonic() + 15
    while log.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.pending() == 0
    assert _stream_len(redis_proc.url) == 2
    log.close()


def test_a_deleted_log_keeps_records_in_the_spool_until_a_restart(
    redis_proc: RedisProcess, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    log = _spooled(redis_proc.url, spool, flush_interval_s=None)
    assert log.append(sample_draft(turn_id="first")) is not None
    raw = redis.Redis.from_url(redis_proc.url)
    raw.flushall()  # this throwaway server only: the whole database is gone
    raw.close()
    assert log.append(sample_draft(turn_id="second")) is None  # not written into a new chain
    assert log.pending() == 1
    log.close()
    restarted = _spooled(redis_proc.url, spool, flush_interval_s=None)
    restarted.open()  # a restart starts a new log and replays into it
    assert [r.turn_id for r in restarted.iter()] == ["second"]
    assert restarted.verify().ok
    restarted.close()
