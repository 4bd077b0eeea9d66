"""A bounded on-disk spool so that no audit record whose id was handed out is lost.

Any failure to append (the backend is down, locked, full, was replaced...) puts the
draft (not a sealed record) in a small SQLite file with ``synchronous=FULL``; drafts
get their seq and hash only when they reach the backend, so the chain stays valid
however long the outage. The spool file is created on the first failure only.

Replay is in spool order and happens when the log opens (a restarted process sends
what a crashed one left), before any new record is appended, on :meth:`flush` and
from a background thread while drafts wait. A draft that fails for a reason of its
own stays in the spool and is retried; the others go on. Backends deduplicate by
record id, so a crash between delivering a draft and deleting it from the spool
cannot produce a duplicate. Drafts the spool cannot even parse are moved to its
``quarantine`` table (kept, never deleted) and counted.

Give each guard process its own spool directory if record order across processes
matters: ordering is guaranteed within a process, not between processes replaying
one spool (which is still safe: delivery is idempotent).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from sarsteer_guard.audit.audio import KeptAudio
from sarsteer_guard.audit.base import AuditLog, PrunePreview, RecordFilter, VerifyReport
from sarsteer_guard.audit.record import AuditDraft, AuditRecord, draft_from_json, draft_to_json
from sarsteer_guard.audit.sqlite_log import connect_wal
from sarsteer_guard.errors import AuditError, StoreUnavailableError, one_line
from sarsteer_guard.log import get_logger

_log = get_logger(__name__)

SPOOLED = Counter("sarsteer_audit_spooled_total", "Audit drafts written to the spool")
REPLAYED = Counter("sarsteer_audit_spool_replayed_total", "Spooled audit drafts delivered")
REJECTED = Counter(
    "sarsteer_audit_spool_rejected_total", "Audit drafts refused because the spool was full"
)
SPOOL_BYTES = Gauge("sarsteer_audit_spool_bytes", "Bytes of audit drafts waiting in the spool")

#: Exceptions that mean "the backend is down": replay stops at the first one.
UNAVAILABLE: tuple[type[Exception], ...] = (StoreUnavailableError, ConnectionError, TimeoutError)
#: File name of the spool inside its directory.
SPOOL_FILE = "audit-spool.db"

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


def spool_backlog(spool_dir: str | Path) -> tuple[int, int] | None:
    """(waiting, quarantined) drafts in a spool directory, read only; None if there is none."""
    path = Path(spool_dir).expanduser() / SPOOL_FILE
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(path, timeout=5.0)
        try:
            waiting = int(conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
            held = int(conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return waiting, held


class SpooledAuditLog(AuditLog):
    """Wrap ``inner`` so that no append is ever lost to a failure of ``inner``.

    Args:
        inner: the real backend (:class:`RedisAuditLog` or :class:`SqliteAuditLog`).
        spool_dir: directory for ``audit-spool.db``; survives process restarts.
        max_bytes: bound on spooled draft bytes; beyond it appends raise
            :class:`SpoolFullError` and ``rejected`` counts them.
        flush_interval_s: period of the background replay thread (started whenever
            drafts wait); None disables it (call :meth:`flush` yourself).
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
        self._opened = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SpooledAuditLog({self.inner!r}, spool_dir={str(self.spool_dir)!r})"

    # -- spool file --------------------------------------------------------------------
    def _spool(self, *, create: bool) -> sqlite3.Connection | None:
        """The spool database; created only when ``create`` (a draft must be kept)."""
        if self._closed:
            raise AuditError(f"{self!r} is closed; open a new audit log")
        if self._db is None:
            path = self.spool_dir / SPOOL_FILE
            if not create and not path.is_file():
                return None
            try:
                self.spool_dir.mkdir(parents=True, exist_ok=True)
                db = connect_wal(path, 30.0)
                db.executescript(_SCHEMA)
            except sqlite3.Error as error:
                raise AuditError(
                    f"cannot open the audit spool in {self.spool_dir} ({error}); "
                    "check the directory and its permissions"
                ) from error
            self._db = db
            self._recount()
            if self._count:
                _log.warning("audit spool has pending drafts", pending=self._count)
        return self._db

    def _recount(self) -> None:
        if self._db is None:
            return
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool"
        ).fetchone()
        self._count, self._bytes = int(count), int(size)
        SPOOL_BYTES.set(self._bytes)

    def open(self) -> None:
        """Open the backend and replay what a previous (crashed) process left in the spool.

        Does not raise when the backend is down: replay then continues in the
        background (when ``flush_interval_s`` is set) and on later appends.
        """
        with self._lock:
            if self._opened:
                return
            self._opened = True
            if self._spool(create=False) is None:
                self._try(self.inner.open)
                return
            if self._count:
                self._try(self._replay)
                if self._count:
                    self._ensure_flusher()

    def _try(self, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as error:  # the backend may be down at start: appends spool meanwhile
            _log.warning("audit backend not ready at open", error=one_line(error))

    def pending(self) -> int:
        """Drafts waiting in the spool (including ones left by a previous process)."""
        with self._lock:
            self.open()
            return self._count

    def _enqueue(self, draft: AuditDraft, cause: Exception | None) -> None:
        db = self._spool(create=True)
        assert db is not None  # created on demand  # noqa: S101 - narrowing for mypy
        text = draft_to_json(draft)
        size = len(text.encode("utf-8"))
        if self._bytes + size > self.max_bytes:
            self.rejected += 1
            REJECTED.inc()
            raise SpoolFullError(
                f"audit spool {self.spool_dir} is full ({self._bytes} of {self.max_bytes} bytes) "
                f"while the audit backend fails: record {draft.id} (turn {draft.turn_id}) was "
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
                f"audit backend failed and the spool in {self.spool_dir} cannot be written "
                f"({error}): record {draft.id} was NOT written; free disk space or fix the spool"
            ) from error
        self._count += 1
        self._bytes += size
        self.spooled += 1
        SPOOLED.inc()
        SPOOL_BYTES.set(self._bytes)
        self._ensure_flusher()

    def _replay(self) -> int:
        """Deliver spooled drafts in order; raise at the first unavailability.

        A draft that fails for another reason is left in the spool (and logged) and the
        rest go on; it is retried on the next replay.
        """
        db = self._spool(create=False)
        if db is None or not self._count:
            return 0
        delivered = 0
        after = 0
        while True:
            rows = db.execute(
                "SELECT n, data FROM spool WHERE n > ? ORDER BY n LIMIT 100", (after,)
            ).fetchall()
            if not rows:
                break
            done: list[int] = []
            try:
                for n, data in rows:
                    after = int(n)
                    if self._deliver(db, int(n), str(data)):
                        done.append(int(n))
            finally:
                if done:
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany("DELETE FROM spool WHERE n = ?", [(n,) for n in done])
                    db.execute("COMMIT")
                    delivered += len(done)
                    self.replayed += len(done)
                    REPLAYED.inc(len(done))
                self._recount()
        if delivered:
            _log.info("audit spool replayed", delivered=delivered, pending=self._count)
        return delivered

    def _deliver(self, db: sqlite3.Connection, n: int, data: str) -> bool:
        """Append one spooled draft; True when it may leave the spool."""
        try:
            draft = draft_from_json(data)
        except ValidationError as error:
            # A damaged spool line must not block every later record.
            self._quarantine(db, n, data, error)
            return True
        try:
            self.inner.append(draft)
        except UNAVAILABLE:
            raise
        except Exception as error:  # kept in the spool and retried; the rest go on
            _log.error("spooled audit draft failed again", id=draft.id, error=one_line(error))
            return False
        return True

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
            self.open()
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
        """Append through the backend, or spool durably and return None when that fails.

        Raises:
            SpoolFullError: the backend fails and the spool is full.
            AuditError: the backend fails and the spool cannot be written.
        """
        with self._lock:
            self.open()
            if self._count:
                try:
                    self._replay()
                except UNAVAILABLE as error:
                    self._enqueue(draft, error)
                    return None
            try:
                return self.inner.append(draft)
            except Exception as error:  # whatever failed, the record must not be lost
                _log.warning("audit append failed; spooling", id=draft.id, error=one_line(error))
                self._enqueue(draft, error)
                return None

    def _iter(self, where: RecordFilter) -> Iterator[AuditRecord]:
        """Records in the backend (spooled drafts are not visible until replayed)."""
        return self.inner.iter(where)

    def get(self, record_id: str) -> AuditRecord | None:
        """Look up in the backend."""
        return self.inner.get(record_id)

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyReport:
        """Verify the backend's chain; notes say how many drafts wait in the spool."""
        report = self.inner.verify(anchor)
        with self._lock:
            self.open()
            waiting = self._count
        notes = list(report.notes)
        if waiting:
            notes.append(f"{waiting} records wait in the spool {self.spool_dir} to be chained")
        if self.quarantined:
            notes.append(f"{self.quarantined} unreadable spooled drafts are kept in its quarantine")
        return replace(report, notes=tuple(notes))

    def prune(self, now: datetime | None = None) -> int:
        """Prune the backend."""
        return self.inner.prune(now)

    def prune_preview(self, now: datetime | None = None) -> PrunePreview:
        """What pruning the backend would remove."""
        return self.inner.prune_preview(now)

    def get_audio(self, record_id: str) -> KeptAudio | None:
        """Kept audio from the backend."""
        return self.inner.get_audio(record_id)

    def audio_due(self, now: datetime | None = None) -> list[tuple[str, datetime]]:
        """Kept audio past its retention in the backend."""
        return self.inner.audio_due(now)

    def prune_audio(self, now: datetime | None = None) -> int:
        """Delete the backend's expired audio."""
        return self.inner.prune_audio(now)

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
