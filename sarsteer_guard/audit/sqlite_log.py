"""Embedded audit log in SQLite (the default backend: no server to run).

WAL mode lets compliance staff read while the guard writes; every append runs in a
``BEGIN IMMEDIATE`` transaction, which takes SQLite's single write lock before the
head is read, so appenders in several threads or processes never fork the chain.
Each thread gets its own connection (sqlite3 connections are not thread-safe).

``audit_audio`` holds kept audio beside the chain (record id, format, expiry, bytes;
see :mod:`sarsteer_guard.audit.audio`), written in the same transaction as its record.
``audit_meta`` holds the store marker (``format``, ``version``, ``store_id``,
``created_at``), the head (``head_seq``, ``head_hash``, ``head_expiry``) and the
checkpoint (``checkpoint``, JSON). A writer creates the file and the marker; a reader
(``create=False``) never creates anything and refuses a path that holds no audit log.
A writer also refuses to append when the file it opened was deleted or replaced, or
its marker changed, so records never land in a log nobody will verify (a spooling
wrapper keeps them meanwhile).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sarsteer_guard.audit.audio import KeptAudio, inline_audio, split_audio
from sarsteer_guard.audit.base import (
    AuditLog,
    AuditStoreMissingError,
    RecordFilter,
    StoredEntry,
    VerifyReport,
    is_expired,
    parse_record,
    time_key,
)
from sarsteer_guard.audit.chain import (
    NO_RECORDS,
    ChainHead,
    StoreMarker,
    json_object,
    later,
    seal,
    stored_expiry,
)
from sarsteer_guard.audit.checkpoint import Checkpoint, new_checkpoint
from sarsteer_guard.audit.keys import AuditKeys
from sarsteer_guard.audit.record import (
    GENESIS_HASH,
    AuditDraft,
    AuditRecord,
    parse_time,
    utcnow,
)
from sarsteer_guard.audit.verify import ChainState, VerifyOptions, storage_failure, verify_chain
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
CREATE TABLE IF NOT EXISTS audit_audio (
    record_id TEXT PRIMARY KEY,
    format TEXT NOT NULL,
    expires TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_audio_expires ON audit_audio(expires);
"""

#: Index columns stored beside ``data``; verify compares each with the hashed content.
_COLUMNS = ("seq", "id", "time", "session_id", "policy_name", "policy_version", "rule", "refused")
_HEAD_KEYS = ("store_id", "head_seq", "head_hash", "head_expiry")
_PAGE = 500

KeySource = AuditKeys | None | Literal["env"]


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


def _meta(conn: sqlite3.Connection, keys: tuple[str, ...] | None = None) -> dict[str, str]:
    if keys is None:
        rows = conn.execute("SELECT key, value FROM audit_meta").fetchall()
    else:
        marks = ",".join("?" * len(keys))
        rows = conn.execute(
            f"SELECT key, value FROM audit_meta WHERE key IN ({marks})",  # noqa: S608 - placeholders only
            keys,
        ).fetchall()
    return {str(k): str(v) for k, v in rows}


def _set_meta(conn: sqlite3.Connection, values: dict[str, str]) -> None:
    conn.executemany(
        "INSERT INTO audit_meta(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        list(values.items()),
    )


def _head(meta: dict[str, str]) -> ChainHead | None:
    if "head_seq" not in meta or "head_hash" not in meta:
        return None
    return ChainHead(int(meta["head_seq"]), meta["head_hash"], meta.get("head_expiry", NO_RECORDS))


def _checkpoint(meta: dict[str, str], marker: StoreMarker | None) -> Checkpoint | None:
    """The stored checkpoint; a bare legacy one only in stores without a marker.

    Raises:
        AuditError: the checkpoint JSON is unreadable.
    """
    text = meta.get("checkpoint")
    if text is not None:
        try:
            return Checkpoint.model_validate_json(text)
        except ValueError as error:
            raise AuditError(f"the checkpoint is unreadable ({error.__class__.__name__})") from None
    if marker is None and "checkpoint_seq" in meta and "checkpoint_hash" in meta:
        return Checkpoint.legacy(int(meta["checkpoint_seq"]), meta["checkpoint_hash"])
    return None


def _expired_hash(text: str, now: datetime, max_age: timedelta | None) -> str | None:
    """The hash of a stored record that has expired; None otherwise or when unreadable."""
    try:
        data = json.loads(text)
        if isinstance(data, dict) and is_expired(data, now, max_age):
            return str(data["hash"])
    except (ValueError, KeyError, TypeError):
        pass
    return None


class SqliteAuditLog(AuditLog):
    """Audit log in one SQLite file.

    Args:
        path: database file; a writer creates it and its parent directories.
        max_age: optional retention by age applied by :meth:`prune`, on top of each
            record's ``retention_until``.
        busy_timeout_s: how long an appender waits for another process's write lock
            before the store counts as unavailable.
        create: True for writers (the Guard); False for readers (``audit`` commands),
            which raise :class:`AuditStoreMissingError` instead of creating a store.
        keys: checkpoint MAC keys; ``"env"`` reads ``SARSTEER_AUDIT_KEY`` on first use.
        audio_max_age: how long kept audio stays when a draft does not say
            (default :data:`~sarsteer_guard.audit.audio.DEFAULT_AUDIO_MAX_AGE`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_age: timedelta | None = None,
        audio_max_age: timedelta | None = None,
        busy_timeout_s: float = 30.0,
        create: bool = True,
        keys: KeySource = "env",
    ) -> None:
        self.path = Path(path).expanduser()
        self.max_age = max_age
        self.audio_max_age = audio_max_age
        self.busy_timeout_s = busy_timeout_s
        self.create = create
        self._key_source = keys
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        # Serialises this process's writers before SQLite's lock: SQLite's busy handler
        # backs off with sleeps of up to 100 ms, which threads contending here would pay.
        self._write_lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._marker: StoreMarker | None = None
        self._inode: int | None = None
        self._opened = False
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteAuditLog({str(self.path)!r})"

    # -- opening -----------------------------------------------------------------------
    def open(self) -> None:
        """Open the file: create the store (writers) or check it is an audit log (readers)."""
        self._conn()

    def _connect(self) -> sqlite3.Connection:
        if self.create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect_wal(self.path, self.busy_timeout_s)
            conn.executescript(_SCHEMA)
            return conn
        if not self.path.is_file():
            raise AuditStoreMissingError(
                f"no audit log at {self.path}: the file does not exist (reading never creates "
                "one); check --audit or $SARSTEER_AUDIT_URL"
            )
        return sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise AuditError(f"audit log {self.path} is closed; open a new one")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = None
        try:
            conn = self._connect()
            with self._open_lock:
                if not self._opened:
                    self._open_store(conn)
                    self._opened = True
        except sqlite3.Error as error:
            raise AuditError(
                f"cannot open audit database {self.path} ({error}); check the path and permissions"
            ) from error
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self._local.conn = conn
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _open_store(self, conn: sqlite3.Connection) -> None:
        tables = {
            str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not {"audit_records", "audit_meta"} <= tables:
            raise AuditStoreMissingError(
                f"{self.path} holds no audit log (the file is empty or another database); "
                "if it held one, it was emptied: restore it from a backup"
            )
        if self.create:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._init_marker(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._inode = os.stat(self.path).st_ino
        meta = _meta(conn)
        self._marker = StoreMarker.from_fields(meta)
        if self._marker is None and "head_seq" not in meta:
            raise AuditStoreMissingError(
                f"{self.path} holds no audit log (no store marker and no records); if it held "
                "one, it was emptied: restore it from a backup"
            )

    def _init_marker(self, conn: sqlite3.Connection) -> None:
        """Write the marker of a new store, or add it (and the head's expiry) to an old one."""
        meta = _meta(conn)
        if StoreMarker.from_fields(meta) is not None:
            return
        updates = StoreMarker.new().fields()
        if "head_seq" not in meta:
            updates.update(head_seq="0", head_hash=GENESIS_HASH, head_expiry=NO_RECORDS)
        elif "head_expiry" not in meta:
            expiry = NO_RECORDS
            for (data,) in conn.execute("SELECT data FROM audit_records ORDER BY seq"):
                expiry = later(expiry, stored_expiry(json_object(data), self.max_age))
            updates["head_expiry"] = expiry
        legacy = _checkpoint(meta, None)
        if legacy is not None and "checkpoint" not in meta:
            updates["checkpoint"] = legacy.to_json()
        _set_meta(conn, updates)

    def mac_keys(self) -> AuditKeys | None:
        """The checkpoint MAC keys (read from the environment on first use)."""
        source = self._key_source
        if isinstance(source, str):
            source = self._key_source = AuditKeys.from_env()
        return source

    def _fail(self, conn: sqlite3.Connection, error: sqlite3.Error, what: str) -> Exception:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            return StoreUnavailableError(
                f"audit database {self.path} stayed locked for {self.busy_timeout_s:g}s while "
                f"trying to {what}; retry, or find the process holding it"
            )
        return AuditError(f"cannot {what} in audit database {self.path} ({error})")

    def _check_identity(self, store_id: str | None) -> None:
        """Refuse to write into a file other than the one opened (deleted, replaced, reset)."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        known = None if self._marker is None else self._marker.store_id
        if inode != self._inode or store_id != known:
            raise AuditError(
                f"audit database {self.path} was deleted, replaced or emptied while in use "
                f"(store id {known}); records are kept in the spool: restore the file from a "
                "backup, or restart the guard to start a new log"
            )

    # -- contract ----------------------------------------------------------------------
    def append(self, draft: AuditDraft) -> AuditRecord:
        """Seal and insert ``draft`` under SQLite's write lock (idempotent by id)."""
        conn = self._conn()
        with self._write_lock:
            return self._append_locked(conn, draft)

    def _append_locked(self, conn: sqlite3.Connection, draft: AuditDraft) -> AuditRecord:
        try:
            conn.execute("BEGIN IMMEDIATE")
            meta = _meta(conn, _HEAD_KEYS)
            self._check_identity(meta.get("store_id"))
            row = conn.execute(
                "SELECT data FROM audit_records WHERE id = ?", (draft.id,)
            ).fetchone()
            if row is not None:
                conn.execute("COMMIT")
                return self._same_id(parse_record(row[0], where=f"id {draft.id}"), draft.id)
            head = _head(meta) or ChainHead()
            draft, kept = split_audio(draft, self.audio_max_age)
            record, text, new = seal(draft, head, max_age=self.max_age)
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
            if kept is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO audit_audio(record_id, format, expires, data) "
                    "VALUES (?, ?, ?, ?)",
                    (kept.record_id, kept.format, time_key(kept.expires or record.time), kept.data),
                )
            _set_meta(
                conn, {"head_seq": str(new.seq), "head_hash": new.hash, "head_expiry": new.expiry}
            )
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise self._fail(conn, error, "append a record") from error
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return record

    def _same_id(self, record: AuditRecord, record_id: str) -> AuditRecord:
        if record.id != record_id:
            raise AuditError(
                f"the id index of {self.path} points {record_id} at record {record.id}: the "
                "database was edited; run 'sarsteer-guard audit verify'"
            )
        return record

    @staticmethod
    def _sql(where: RecordFilter) -> tuple[list[str], list[Any]]:
        """Clauses on the indexed columns (time, session) only.

        Every other filter, and these again, are checked on the hashed content, so an
        edited column can at most hide a record from a time or session query, and
        ``verify`` reports that edit.
        """
        clauses = ["seq > ?"]
        params: list[Any] = []
        pairs: list[tuple[str, str | None]] = [
            ("time >= ?", None if where.since is None else time_key(where.since)),
            ("time < ?", None if where.until is None else time_key(where.until)),
            ("session_id = ?", where.session),
        ]
        for clause, value in pairs:
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return clauses, params

    def _iter(self, where: RecordFilter) -> Iterator[AuditRecord]:
        """Page through matching records by seq; no transaction is held between pages."""
        clauses, params = self._sql(where)
        sql = (
            f"SELECT seq, data FROM audit_records WHERE {' AND '.join(clauses)} "  # noqa: S608 - only fixed clauses, values bound
            f"ORDER BY seq LIMIT {_PAGE}"
        )
        last = where.after_seq or 0
        while True:
            conn = self._conn()
            try:
                rows = conn.execute(sql, [last, *params]).fetchall()
            except sqlite3.Error as error:
                raise self._fail(conn, error, "read records") from error
            for seq, data in rows:
                record = parse_record(data, where=f"row {seq}")
                if where.matches(record):
                    yield record
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
        if row is None:
            return None
        return self._same_id(parse_record(row[0], where=f"id {record_id}"), record_id)

    def _state(self, conn: sqlite3.Connection) -> ChainState:
        meta = _meta(conn)
        marker = StoreMarker.from_fields(meta)
        try:
            checkpoint = _checkpoint(meta, marker)
        except AuditError as error:
            return ChainState(marker, _head(meta), None, damage=str(error))
        return ChainState(marker, _head(meta), checkpoint)

    @staticmethod
    def _entries(conn: sqlite3.Connection) -> Iterator[StoredEntry]:
        last = 0
        try:
            cursor = conn.execute(
                f"SELECT {', '.join(_COLUMNS)}, data FROM audit_records ORDER BY seq"  # noqa: S608 - fixed column names
            )
            for row in cursor:
                last = int(row[0])
                yield StoredEntry(
                    row[-1], f"row {last}", dict(zip(_COLUMNS, row[:-1], strict=True))
                )
        except sqlite3.DatabaseError as error:
            yield storage_failure(f"the row after {last}", error)

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyReport:
        """Verify inside one read transaction, so concurrent appends cannot confuse it."""
        conn = self._conn()
        try:
            conn.execute("BEGIN")
            options = VerifyOptions(keys=self.mac_keys(), anchor=anchor)
            report = verify_chain(self._entries(conn), self._state(conn), options)
        except sqlite3.Error as error:
            raise self._fail(conn, error, "verify the chain") from error
        try:
            conn.execute("COMMIT")
        except sqlite3.DatabaseError:
            # A read-only transaction over damaged pages may fail to end; the report
            # already names where the storage failed, so end it and keep the report.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        return report

    def prune(self, now: datetime | None = None) -> int:
        """Delete the expired prefix and move the checkpoint in the same transaction."""
        now = now or utcnow()
        conn = self._conn()
        keys = self.mac_keys()
        with self._write_lock:
            return self._prune_locked(conn, now, keys)

    def _prune_locked(self, conn: sqlite3.Connection, now: datetime, keys: AuditKeys | None) -> int:
        try:
            conn.execute("BEGIN IMMEDIATE")
            meta = _meta(conn)
            marker = StoreMarker.from_fields(meta)
            last: tuple[int, str] | None = None
            count = 0
            for seq, data in conn.execute("SELECT seq, data FROM audit_records ORDER BY seq"):
                digest = _expired_hash(data, now, self.max_age)
                if digest is None:
                    break
                last = (int(seq), digest)
                count += 1
            if last is not None:
                conn.execute("DELETE FROM audit_records WHERE seq <= ?", (last[0],))
                checkpoint = new_checkpoint(
                    seq=last[0],
                    digest=last[1],
                    removed=count,
                    reason="retention",
                    now=now,
                    previous=_checkpoint(meta, marker),
                    store_id=None if marker is None else marker.store_id,
                    max_age=self.max_age,
                    max_len=None,
                    keys=keys,
                )
                _set_meta(conn, {"checkpoint": checkpoint.to_json()})
                conn.execute(
                    "DELETE FROM audit_meta WHERE key IN ('checkpoint_seq', 'checkpoint_hash')"
                )
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise self._fail(conn, error, "prune expired records") from error
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return count

    # -- kept audio ----------------------------------------------------------------------
    def _audio_rows(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        """Rows of ``audit_audio``; none in stores older than the table (readers create nothing)."""
        conn = self._conn()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise self._fail(conn, error, "read kept audio") from error
        except sqlite3.Error as error:
            raise self._fail(conn, error, "read kept audio") from error

    def get_audio(self, record_id: str) -> KeptAudio | None:
        """The audio kept beside the chain for this record, else audio inline in it."""
        rows = self._audio_rows(
            "SELECT format, expires, data FROM audit_audio WHERE record_id = ?", (record_id,)
        )
        if rows:
            fmt, expires, data = rows[0]
            return KeptAudio(record_id, fmt, bytes(data), parse_time(expires))
        record = self.get(record_id)
        return None if record is None else inline_audio(record)

    def audio_due(self, now: datetime | None = None) -> list[tuple[str, datetime]]:
        """Kept audio past its retention at ``now``, oldest expiry first."""
        rows = self._audio_rows(
            "SELECT record_id, expires FROM audit_audio WHERE expires <= ? ORDER BY expires",
            (time_key(now or utcnow()),),
        )
        return [(str(rid), parse_time(expires)) for rid, expires in rows]

    def prune_audio(self, now: datetime | None = None) -> int:
        """Delete kept audio past its retention (records and the chain stay as they are)."""
        conn = self._conn()
        with self._write_lock:
            try:
                cursor = conn.execute(
                    "DELETE FROM audit_audio WHERE expires <= ?", (time_key(now or utcnow()),)
                )
            except sqlite3.OperationalError as error:
                if "no such table" in str(error):
                    return 0
                raise self._fail(conn, error, "delete expired audio") from error
            except sqlite3.Error as error:
                raise self._fail(conn, error, "delete expired audio") from error
        return int(cursor.rowcount)

    def close(self) -> None:
        """Close every thread's connection; idempotent."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
