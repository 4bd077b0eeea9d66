"""A bounded on-disk spool so that no audit record is lost while the backend is down.

Drafts (not sealed records) wait in a small SQLite file with ``synchronous=FULL``;
they get their seq and hash only when they reach the backend, so the chain stays
valid however long the outage. Replay is in spool order and happens before any new
record is appended, on the next :meth:`SpooledAuditLog.append`, on :meth:`flush` and
from a background thread. Backends deduplicate by record id, so a crash between
delivering a draft and deleting it from the spool cannot produce a duplicate.

Give each guard process its own spool directory: ordering is guaranteed within a
process, not between processes replaying one spool.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from sarsteer_guard.audit.base import AuditLog, VerifyReport
from sarsteer_guard.audit.record import AuditDraft, AuditRecord, draft_from_json, draft_to_json
from sarsteer_guard.audit.sqlite_log import connect_wal
from sarsteer_guard.errors import AuditError, StoreUnavailableError
from sarsteer_guard.log import get_logger

_log = get_logger(__name__)

SPOOLED = Counter("sarsteer_audit_spooled_total", "Audit drafts written to the spool")
REPLAYED = Counter("sarsteer_audit_spool_replayed_total", "Spooled audit drafts delivered")
REJECTED = Counter(
    "sarsteer_audit_spool_rejected_total", "Audit drafts refused because the spool was full"
)
SPOOL_BYTES = Gauge("sarsteer_audit_spool_bytes", "Bytes of audit drafts waiting in the spool")

#: Exceptions that mean "the backend is down, spool and retry later".
UNAVAILABLE: tuple[type[Exception], ...] = (StoreUnavailableError, ConnectionError, TimeoutError)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    size INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    n INTEGER PRIMARY KEY,
    data TEXT NOT NULL,
    error TEXT NOT NULL
);
"""


class SpoolFullError(AuditError):
    """The spool reached ``max_bytes``; the record was refused, not dropped silently."""


class SpooledAuditLog(AuditLog):
    """Wrap ``inner`` so that appends survive its outages.

    Args:
        inner: the real backend (usually :class:`RedisAuditLog`).
        spool_dir: directory for ``audit-spool.db``; survives process restarts.
        max_bytes: bound on spooled draft bytes; beyond it appends raise
            :class:`SpoolFullError` and ``rejected`` counts them.
        flush_interval_s: period of the background replay thread (started on the first
            spooled draft); None disables it (call :meth:`flush` yourself).
    """

    def __init__(
        self,
        inner: AuditLog,
        spool_dir: str | Path,
        max_bytes: int = 64 * 1024 * 1024,
        *,
        flush_interval_s: float | None = 5.0,
    ) -> None:
        self.inner = inner
        self.spool_dir = Path(spool_dir).expanduser()
        self.max_bytes = max_bytes
        self.flush_interval_s = flush_interval_s
        #: Drafts refused because the spool was full (also a Prometheus counter).
        self.rejected = 0
        #: Drafts written to the spool by this instance.
        self.spooled = 0
        #: Spooled drafts delivered by this instance.
        self.replayed = 0
        #: Unreadable spooled drafts moved to the spool's ``quarantine`` table.
        self.quarantined = 0
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._bytes = 0
        self._count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SpooledAuditLog({self.inner!r}, spool_dir={str(self.spool_dir)!r})"

    # -- spool file --------------------------------------------------------------------
    def _spool(self) -> sqlite3.Connection:
        if self._closed:
            raise AuditError(f"{self!r} is closed; open a new audit log")
        if self._db is None:
            try:
                self.spool_dir.mkdir(parents=True, exist_ok=True)
                db = connect_wal(self.spool_dir / "audit-spool.db", 30.0)
                db.executescript(_SCHEMA)
                count, size = db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool"
                ).fetchone()
            except sqlite3.Error as error:
                raise AuditError(
                    f"cannot open the audit spool in {self.spool_dir} ({error}); "
                    "check the directory and its permissions"
                ) from error
            self._db, self._count, self._bytes = db, int(count), int(size)
            SPOOL_BYTES.set(self._bytes)
            if self._count:
                _log.warning("audit spool has pending drafts", pending=self._count)
        return self._db

    def pending(self) -> int:
        """Drafts waiting in the spool (including ones left by a previous process)."""
        with self._lock:
            self._spool()
            return self._count

    def _enqueue(self, draft: AuditDraft, cause: Exception | None) -> None:
        db = self._spool()
        text = draft_to_json(draft)
        size = len(text.encode("utf-8"))
        if self._bytes + size > self.max_bytes:
            self.rejected += 1
            REJECTED.inc()
            raise SpoolFullError(
                f"audit spool {self.spool_dir} is full ({self._bytes} of {self.max_bytes} bytes) "
                f"while the audit backend is down: record {draft.id} (turn {draft.turn_id}) was "
                "NOT written; restore the backend or raise the spool's max_bytes"
            ) from cause
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO spool(id, size, data) VALUES (?, ?, ?)", (draft.id, size, text))
            db.execute("COMMIT")
        except sqlite3.Error as error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise AuditError(
                f"audit backend is down and the spool in {self.spool_dir} cannot be written "
                f"({error}): record {draft.id} was NOT written; free disk space or fix the spool"
            ) from error
        self._count += 1
        self._bytes += size
        self.spooled += 1
        SPOOLED.inc()
        SPOOL_BYTES.set(self._bytes)
        self._ensure_flusher()

    def _replay(self) -> int:
        """Deliver spooled drafts in order; stop (and raise) at the first unavailability."""
        db = self._spool()
        delivered = 0
        while self._count:
            rows = db.execute("SELECT n, size, data FROM spool ORDER BY n LIMIT 100").fetchall()
            if not rows:
                self._count, self._bytes = 0, 0
                break
            done: list[tuple[int, int]] = []
            try:
                for n, size, data in rows:
                    try:
                        draft = draft_from_json(data)
                    except ValidationError as error:
                        # A damaged spool line must not block every later record.
                        self._quarantine(db, int(n), data, error)
                        done.append((int(n), int(size)))
                        continue
                    self.inner.append(draft)
                    done.append((int(n), int(size)))
            finally:
                if done:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("DELETE FROM spool WHERE n <= ?", (done[-1][0],))
                    db.execute("COMMIT")
                    self._count -= len(done)
                    self._bytes -= sum(size for _, size in done)
                    delivered += len(done)
                    self.replayed += len(done)
                    REPLAYED.inc(len(done))
                    SPOOL_BYTES.set(self._bytes)
        if delivered:
            _log.info("audit spool replayed", delivered=delivered, pending=self._count)
        return delivered

    def _quarantine(self, db: sqlite3.Connection, n: int, data: str, error: Exception) -> None:
        self.quarantined += 1
        _log.error("unreadable spooled audit draft quarantined", row=n, error=str(error))
        db.execute(
            "INSERT OR REPLACE INTO quarantine(n, data, error) VALUES (?, ?, ?)",
            (n, data, str(error)),
        )

    def flush(self) -> int:
        """Replay the spool now; return how many drafts were delivered.

        Raises:
            StoreUnavailableError: the backend is still down (drafts stay spooled).
        """
        with self._lock:
            try:
                return self._replay()
            except UNAVAILABLE as error:
                if isinstance(error, StoreUnavailableError):
                    raise
                raise StoreUnavailableError(
                    f"audit backend still unreachable ({error}); drafts stay spooled"
                ) from error

    def _ensure_flusher(self) -> None:
        if self.flush_interval_s is None or (self._thread and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._flush_loop,
            args=(self.flush_interval_s,),
            name="sarsteer-audit-spool",
            daemon=True,
        )
        self._thread.start()

    def _flush_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                with self._lock:
                    if self._closed:
                        return
                    self._replay()
                    if not self._count:
                        self._thread = None
                        return
            except UNAVAILABLE:
                continue
            except Exception:  # keep retrying; the next append reports the error
                _log.exception("audit spool replay failed")

    # -- contract ----------------------------------------------------------------------
    def append(self, draft: AuditDraft) -> AuditRecord | None:
        """Append through the backend, or spool durably and return None while it is down.

        Raises:
            SpoolFullError: the backend is down and the spool is full.
        """
        with self._lock:
            if self.pending():
                try:
                    self._replay()
                except UNAVAILABLE as error:
                    self._enqueue(draft, error)
                    return None
            try:
                return self.inner.append(draft)
            except UNAVAILABLE as error:
                _log.warning("audit backend unavailable; spooling", error=str(error))
                self._enqueue(draft, error)
                return None

    def iter(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        policy: str | None = None,
        session: str | None = None,
        rule: str | None = None,
        refused: bool | None = None,
    ) -> Iterator[AuditRecord]:
        """Records in the backend (spooled drafts are not visible until replayed)."""
        return self.inner.iter(since, until, policy, session, rule, refused)

    def get(self, record_id: str) -> AuditRecord | None:
        """Look up in the backend."""
        return self.inner.get(record_id)

    def verify(self) -> VerifyReport:
        """Verify the backend's chain."""
        return self.inner.verify()

    def prune(self, now: datetime | None = None) -> int:
        """Prune the backend."""
        return self.inner.prune(now)

    def close(self) -> None:
        """Stop the replay thread, close the spool and the backend; idempotent.

        Pending drafts stay on disk and are replayed by the next instance.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        with self._lock:
            self._closed = True
            db, self._db = self._db, None
            if db is not None:
                db.close()
        self.inner.close()
