"""Append-only hash chains stored beside the audit log (review labels, the access log).

Reviewers' labels and the record of who looked at what are evidence too, so they get
the audit log's guarantees: every entry is sealed with the same
:func:`~sarsteer_guard.audit.chain.link` (``hash = sha256(prev_hash + canonical
entry)``) and checked by the same :func:`~sarsteer_guard.audit.verify.verify_chain`,
against a head kept beside the entries so a removed tail shows. There is no update
or delete API and no retention: a stream only grows.

Storage follows the audit log it belongs to, so one backup holds everything:

- SQLite: tables ``audit_side`` (stream, seq, data) and ``audit_side_head`` in the same
  file; triggers refuse UPDATE and DELETE on entries;
- Redis: ``{prefix}:side:NAME`` (a stream) and ``{prefix}:side:NAME:head`` under the
  audit log's hash tag, appended by a compare-and-set script like the audit log's;
- anything else (the in-memory test log): a list in memory.

Blocking I/O: call from a worker thread in async code.
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import redis
from pydantic import BaseModel

from sarsteer_guard.audit.base import AuditLog, StoredEntry, VerifyReport
from sarsteer_guard.audit.chain import ChainHead, StoreMarker, link
from sarsteer_guard.audit.record import GENESIS_HASH
from sarsteer_guard.audit.redis_log import RedisAuditLog
from sarsteer_guard.audit.spool import SpooledAuditLog
from sarsteer_guard.audit.sqlite_log import SqliteAuditLog, connect_wal
from sarsteer_guard.audit.verify import ChainState, storage_failure, verify_chain
from sarsteer_guard.errors import AuditError, StoreUnavailableError, one_line

_SIDE_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_side (
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (stream, seq)
);
CREATE TABLE IF NOT EXISTS audit_side_head (
    stream TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_side_no_update BEFORE UPDATE ON audit_side
BEGIN SELECT RAISE(ABORT, 'review streams are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_side_no_delete BEFORE DELETE ON audit_side
BEGIN SELECT RAISE(ABORT, 'review streams are append-only'); END;
"""

# KEYS: stream head; ARGV: expected_head_seq seq hash data
_APPEND = """
local head = redis.call('HMGET', KEYS[2], 'seq', 'hash')
local head_seq = tonumber(head[1]) or 0
if head_seq ~= tonumber(ARGV[1]) then
  return {'conflict', tostring(head_seq), head[2] or ''}
end
redis.call('XADD', KEYS[1], '*', 'seq', ARGV[2], 'hash', ARGV[3], 'data', ARGV[4])
redis.call('HSET', KEYS[2], 'seq', ARGV[2], 'hash', ARGV[3])
return {'ok'}
"""

_PAGE = 500


class SideStream(ABC):
    """One append-only chain of JSON entries (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def append(self, body: Mapping[str, Any]) -> str:
        """Seal ``body`` after the current head and store it; return the stored JSON text.

        Concurrent appenders (threads, processes) never fork the stream.
        """

    @abstractmethod
    def entries(self, after_seq: int = 0) -> Iterator[StoredEntry]:
        """Stored entries with seq above ``after_seq``, in storage order."""

    @abstractmethod
    def head(self) -> ChainHead | None:
        """The newest entry's seq and hash; None before the first append."""

    def verify(self, model: type[BaseModel]) -> VerifyReport:
        """Check every entry's hash and link, that each is a valid ``model``, and the head."""
        # The marker only names the stream: side streams live in an existing store.
        state = ChainState(marker=StoreMarker(self.name, ""), head=self.head())
        return verify_chain(self.entries(), state, model=model)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; idempotent."""


class MemorySideStream(SideStream):
    """Entries in a list (the in-memory audit log's companion; gone with the process)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.stored: list[str] = []
        self._head: ChainHead | None = None
        self._lock = threading.Lock()

    def append(self, body: Mapping[str, Any]) -> str:
        """Seal and keep ``body``."""
        with self._lock:
            head = self._head or ChainHead()
            data = dict(body)
            text = link(data, head)
            self.stored.append(text)
            self._head = ChainHead(data["seq"], data["hash"])
            return text

    def entries(self, after_seq: int = 0) -> Iterator[StoredEntry]:
        """Kept entries after ``after_seq`` (list positions are seqs)."""
        with self._lock:
            texts = self.stored[after_seq:]
        for offset, text in enumerate(texts, start=after_seq + 1):
            yield StoredEntry(text, f"entry {offset}")

    def head(self) -> ChainHead | None:
        """The newest entry's position."""
        return self._head


class SqliteSideStream(SideStream):
    """A stream in the audit log's SQLite file (its own tables; the records are untouched)."""

    def __init__(self, path: Path, name: str, *, busy_timeout_s: float = 30.0) -> None:
        super().__init__(name)
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._conn_obj: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        if self._conn_obj is None:
            if not self.path.is_file():
                raise AuditError(f"no audit log at {self.path}: review streams live beside it")
            try:
                conn = connect_wal(self.path, self.busy_timeout_s)
                conn.executescript(_SIDE_SCHEMA)
            except sqlite3.Error as error:
                raise AuditError(
                    f"cannot open the review tables in {self.path} ({error}); the console needs "
                    "write access to the audit database file"
                ) from error
            self._conn_obj = conn
        return self._conn_obj

    def append(self, body: Mapping[str, Any]) -> str:
        """Seal and insert under SQLite's write lock."""
        with self._lock:
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute(
                    "SELECT seq, hash FROM audit_side_head WHERE stream = ?", (self.name,)
                ).fetchone()
                head = ChainHead() if row is None else ChainHead(int(row[0]), str(row[1]))
                data = dict(body)
                text = link(data, head)
                conn.execute(
                    "INSERT INTO audit_side(stream, seq, data) VALUES (?, ?, ?)",
                    (self.name, data["seq"], text),
                )
                conn.execute(
                    "INSERT INTO audit_side_head(stream, seq, hash) VALUES (?, ?, ?) "
                    "ON CONFLICT(stream) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    (self.name, data["seq"], data["hash"]),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreUnavailableError(
                    f"cannot write the {self.name} stream in {self.path} ({one_line(error)}); "
                    "check the disk and permissions"
                ) from error
            return text

    def entries(self, after_seq: int = 0) -> Iterator[StoredEntry]:
        """Pages of entries by seq (no transaction is held between pages)."""
        last = after_seq
        while True:
            try:
                with self._lock:
                    rows = (
                        self._conn()
                        .execute(
                            "SELECT seq, data FROM audit_side WHERE stream = ? AND seq > ? "
                            "ORDER BY seq LIMIT ?",
                            (self.name, last, _PAGE),
                        )
                        .fetchall()
                    )
            except sqlite3.DatabaseError as error:
                yield storage_failure(f"the {self.name} entry after {last}", error)
                return
            for seq, data in rows:
                yield StoredEntry(data, f"{self.name} row {seq}", {"seq": seq})
            if len(rows) < _PAGE:
                return
            last = int(rows[-1][0])

    def head(self) -> ChainHead | None:
        """The head row of this stream."""
        with self._lock:
            row = (
                self._conn()
                .execute("SELECT seq, hash FROM audit_side_head WHERE stream = ?", (self.name,))
                .fetchone()
            )
        return None if row is None else ChainHead(int(row[0]), str(row[1]))

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            conn, self._conn_obj = self._conn_obj, None
        if conn is not None:
            conn.close()


class RedisSideStream(SideStream):
    """A stream under the audit log's Redis prefix (same hash tag, own keys)."""

    def __init__(self, url: str, prefix: str, name: str, *, socket_timeout_s: float = 5.0) -> None:
        super().__init__(name)
        tag = f"{{{prefix}}}"
        self.keys = [f"{tag}:side:{name}", f"{tag}:side:{name}:head"]
        self.url = url
        self._client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
        )
        self._script = self._client.register_script(_APPEND)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as error:
            raise StoreUnavailableError(
                f"cannot {what} in the {self.name} stream ({type(error).__name__}: "
                f"{one_line(error, limit=120)}); check that Redis is running"
            ) from error

    def append(self, body: Mapping[str, Any]) -> str:
        """Seal against the known head and compare-and-set it; re-seal on a conflict."""
        head = self.head() or ChainHead()
        for _ in range(1000):
            data = dict(body)
            text = link(data, head)
            reply = self._call(
                "append",
                self._script,
                keys=self.keys,
                args=[head.seq, data["seq"], data["hash"], text],
            )
            if reply[0] == "ok":
                return text
            head = ChainHead(int(reply[1]), str(reply[2]) or GENESIS_HASH)
        raise AuditError(f"appending to the {self.name} stream kept conflicting; retry")

    def entries(self, after_seq: int = 0) -> Iterator[StoredEntry]:
        """Entries above ``after_seq``: the newest few read backwards, else a full scan."""
        if after_seq > 0:
            head = self.head()
            if head is None or head.seq <= after_seq:
                return
            if head.seq - after_seq < _PAGE:
                yield from self._tail(after_seq, head.seq - after_seq + 1)
                return
        start = "-"
        while True:
            rows = cast(
                list[tuple[str, dict[str, str]]],
                self._call("read", self._client.xrange, self.keys[0], start, "+", count=_PAGE),
            )
            for sid, fields in rows:
                try:
                    seq = int(fields.get("seq", ""))
                except ValueError:
                    seq = after_seq + 1  # unreadable: the verifier reports it
                if seq > after_seq:
                    yield self._entry(sid, fields)
            if len(rows) < _PAGE:
                return
            start = "(" + rows[-1][0]

    def _tail(self, after_seq: int, count: int) -> Iterator[StoredEntry]:
        rows = cast(
            list[tuple[str, dict[str, str]]],
            self._call("read", self._client.xrevrange, self.keys[0], "+", "-", count=count),
        )
        newer = []
        for sid, fields in rows:
            try:
                if int(fields.get("seq", "")) <= after_seq:
                    break
            except ValueError:
                pass  # unreadable: the verifier reports it
            newer.append(self._entry(sid, fields))
        yield from reversed(newer)

    def _entry(self, sid: str, fields: dict[str, str]) -> StoredEntry:
        return StoredEntry(
            fields.get("data", ""),
            f"{self.name} stream id {sid}",
            {k: fields.get(k) for k in ("seq", "hash")},
        )

    def head(self) -> ChainHead | None:
        """The head hash fields."""
        values = self._call("read the head", self._client.hmget, self.keys[1], ["seq", "hash"])
        if values[0] is None or values[1] is None:
            return None
        return ChainHead(int(values[0]), str(values[1]))

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def open_side_stream(log: AuditLog, name: str) -> SideStream:
    """The stream ``name`` stored beside ``log`` (nothing is written until an append)."""
    if isinstance(log, SpooledAuditLog):
        return open_side_stream(log.inner, name)
    if isinstance(log, SqliteAuditLog):
        return SqliteSideStream(log.path, name, busy_timeout_s=log.busy_timeout_s)
    if isinstance(log, RedisAuditLog):
        return RedisSideStream(log.url, log.prefix, name, socket_timeout_s=log.socket_timeout_s)
    return MemorySideStream(name)
