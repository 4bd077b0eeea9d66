"""Embedded audit log in SQLite (the default backend: no server to run).

WAL mode lets compliance staff read while the guard writes; every append runs in a
``BEGIN IMMEDIATE`` transaction, which takes SQLite's single write lock before the
head is read, so appenders in several threads or processes never fork the chain.
Each thread gets its own connection (sqlite3 connections are not thread-safe).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sarsteer_guard.audit.base import (
    AuditLog,
    StoredEntry,
    VerifyReport,
    is_expired,
    parse_record,
    time_key,
    verify_entries,
)
from sarsteer_guard.audit.record import GENESIS_HASH, AuditDraft, AuditRecord, seal, utcnow
from sarsteer_guard.errors import AuditError, StoreUnavailableError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    session_id TEXT NOT NULL,
    policy_name TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    rule TEXT,
    refused INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_records_time ON audit_records(time);
CREATE INDEX IF NOT EXISTS audit_records_session ON audit_records(session_id);
CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_records_append_only BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

_PAGE = 500


def connect_wal(path: Path, timeout_s: float) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with synchronous=FULL and explicit transactions.

    Switching a new file to WAL can fail with "database is locked" without waiting for
    the busy timeout when another process creates the same file at the same moment, so
    that step is retried until ``timeout_s``.
    """
    conn = sqlite3.connect(
        path,
        timeout=timeout_s,
        isolation_level=None,  # explicit BEGIN/COMMIT only
        check_same_thread=False,  # close() may run on another thread; use is per thread/locked
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.01)
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class SqliteAuditLog(AuditLog):
    """Audit log in one SQLite file.

    Args:
        path: database file; parent directories are created on first use.
        max_age: optional retention by age applied by :meth:`prune`, on top of each
            record's ``retention_until``.
        busy_timeout_s: how long an appender waits for another process's write lock
            before the store counts as unavailable.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_age: timedelta | None = None,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path).expanduser()
        self.max_age = max_age
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        # Serialises this process's writers before SQLite's lock: SQLite's busy handler
        # backs off with sleeps of up to 100 ms, which threads contending here would pay.
        self._write_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteAuditLog({str(self.path)!r})"

    # -- connections -------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise AuditError(f"audit log {self.path} is closed; open a new one")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect_wal(self.path, self.busy_timeout_s)
            conn.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise AuditError(
                f"cannot open audit database {self.path} ({error}); check the path and permissions"
            ) from error
        self._local.conn = conn
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _fail(self, conn: sqlite3.Connection, error: sqlite3.Error, what: str) -> Exception:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            return StoreUnavailableError(
                f"audit database {self.path} stayed locked for {self.busy_timeout_s:g}s while "
                f"trying to {what}; retry, or find the process holding it"
            )
        return AuditError(f"cannot {what} in audit database {self.path} ({error})")

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM audit_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute(
            "INSERT INTO audit_meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _point(self, conn: sqlite3.Connection, name: str) -> tuple[int, str] | None:
        seq = self._meta(conn, f"{name}_seq")
        digest = self._meta(conn, f"{name}_hash")
        if seq is None or digest is None:
            return None
        return int(seq), digest

    # -- contract ----------------------------------------------------------------------
    def append(self, draft: AuditDraft) -> AuditRecord:
        """Seal and insert ``draft`` under SQLite's write lock (idempotent by id)."""
        conn = self._conn()
        with self._write_lock:
            return self._append_locked(conn, draft)

    def _append_locked(self, conn: sqlite3.Connection, draft: AuditDraft) -> AuditRecord:
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT data FROM audit_records WHERE id = ?", (draft.id,)
            ).fetchone()
            if row is not None:
                conn.execute("COMMIT")
                return parse_record(row[0], where=f"id {draft.id}")
            head_seq, head_hash = self._point(conn, "head") or (0, GENESIS_HASH)
            record, text = seal(draft, seq=head_seq + 1, prev_hash=head_hash)
            conn.execute(
                "INSERT INTO audit_records(seq, id, time, session_id, policy_name, "
                "policy_version, rule, refused, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.seq,
                    record.id,
                    time_key(record.time),
                    record.session_id,
                    record.policy_name,
                    record.policy_version,
                    record.rule,
                    int(record.refused),
                    text,
                ),
            )
            self._set_meta(conn, "head_seq", str(record.seq))
            self._set_meta(conn, "head_hash", record.hash)
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise self._fail(conn, error, "append a record") from error
        return record

    def iter(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        policy: str | None = None,
        session: str | None = None,
        rule: str | None = None,
        refused: bool | None = None,
    ) -> Iterator[AuditRecord]:
        """Page through matching records by seq; no transaction is held between pages."""
        where = ["seq > ?"]
        params: list[Any] = []
        if since is not None:
            where.append("time >= ?")
            params.append(time_key(since))
        if until is not None:
            where.append("time < ?")
            params.append(time_key(until))
        if policy is not None:
            where.append("(policy_name = ? OR policy_name || '@' || policy_version = ?)")
            params += [policy, policy]
        if session is not None:
            where.append("session_id = ?")
            params.append(session)
        if rule is not None:
            where.append("rule = ?")
            params.append(rule)
        if refused is not None:
            where.append("refused = ?")
            params.append(int(refused))
        sql = (
            f"SELECT seq, data FROM audit_records WHERE {' AND '.join(where)} "  # noqa: S608 - only fixed clauses, values bound
            f"ORDER BY seq LIMIT {_PAGE}"
        )
        last = 0
        while True:
            conn = self._conn()
            try:
                rows = conn.execute(sql, [last, *params]).fetchall()
            except sqlite3.Error as error:
                raise self._fail(conn, error, "read records") from error
            for seq, data in rows:
                yield parse_record(data, where=f"row {seq}")
            if len(rows) < _PAGE:
                return
            last = int(rows[-1][0])

    def get(self, record_id: str) -> AuditRecord | None:
        """Look a record up by id (indexed)."""
        conn = self._conn()
        try:
            row = conn.execute(
                "SELECT data FROM audit_records WHERE id = ?", (record_id,)
            ).fetchone()
        except sqlite3.Error as error:
            raise self._fail(conn, error, "read a record") from error
        return None if row is None else parse_record(row[0], where=f"id {record_id}")

    def verify(self) -> VerifyReport:
        """Verify inside one read transaction, so concurrent appends cannot confuse it."""
        conn = self._conn()
        try:
            conn.execute("BEGIN")
            checkpoint = self._point(conn, "checkpoint") or (0, GENESIS_HASH)
            head = self._point(conn, "head")
            cursor = conn.execute("SELECT seq, data FROM audit_records ORDER BY seq")
            entries = (StoredEntry(data, f"row {seq}") for seq, data in cursor)
            report = verify_entries(entries, checkpoint=checkpoint, head=head)
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise self._fail(conn, error, "verify the chain") from error
        return report

    def prune(self, now: datetime | None = None) -> int:
        """Delete the expired prefix and move the checkpoint in the same transaction."""
        now = now or utcnow()
        conn = self._conn()
        with self._write_lock:
            return self._prune_locked(conn, now)

    def _prune_locked(self, conn: sqlite3.Connection, now: datetime) -> int:
        try:
            conn.execute("BEGIN IMMEDIATE")
            last: tuple[int, str] | None = None
            count = 0
            for seq, data in conn.execute("SELECT seq, data FROM audit_records ORDER BY seq"):
                record = json.loads(data)
                if not is_expired(record, now, self.max_age):
                    break
                last = (int(seq), str(record["hash"]))
                count += 1
            if last is not None:
                conn.execute("DELETE FROM audit_records WHERE seq <= ?", (last[0],))
                self._set_meta(conn, "checkpoint_seq", str(last[0]))
                self._set_meta(conn, "checkpoint_hash", last[1])
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise self._fail(conn, error, "prune expired records") from error
        return count

    def close(self) -> None:
        """Close every thread's connection; idempotent."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
