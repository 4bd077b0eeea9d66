"""The :class:`AuditLog` contract every backend implements.

Append-only by design: there is no update or delete API. The only way records leave
a log is :meth:`AuditLog.prune` (retention), which removes a *prefix* of the chain and
keeps a checkpoint (see :mod:`sarsteer_guard.audit.checkpoint`) so verification starts
there and can still tell retention from deletion. Verification itself lives in
:mod:`sarsteer_guard.audit.verify`; filters in :mod:`sarsteer_guard.audit.filter`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, Unpack

from pydantic import ValidationError

from sarsteer_guard.audit.audio import KeptAudio, inline_audio
from sarsteer_guard.audit.chain import expired_by, stored_expiry
from sarsteer_guard.audit.filter import RecordFilter, RecordFilterFields
from sarsteer_guard.audit.record import AuditDraft, AuditRecord, format_time
from sarsteer_guard.audit.verify import (
    BreakKind,
    ChainBreak,
    StoredEntry,
    VerifyReport,
)
from sarsteer_guard.errors import AuditError

__all__ = [
    "AuditLog",
    "AuditStoreMissingError",
    "BreakKind",
    "ChainBreak",
    "KeptAudio",
    "PrunePreview",
    "RecordFilter",
    "StoredEntry",
    "VerifyReport",
    "is_expired",
    "parse_record",
    "time_key",
]


class AuditStoreMissingError(AuditError):
    """The named audit store does not exist (or holds no audit log): nothing to read."""


def time_key(value: datetime) -> str:
    """Fixed-width UTC text of ``value``, comparable with stored ``time`` strings."""
    return format_time(value)


class AuditLog(ABC):
    """A tamper-evident, append-only log of guard decisions.

    Implementations: :class:`~sarsteer_guard.audit.sqlite_log.SqliteAuditLog`,
    :class:`~sarsteer_guard.audit.redis_log.RedisAuditLog`,
    :class:`~sarsteer_guard.audit.spool.SpooledAuditLog` (wraps one of them) and the
    in-memory :class:`~sarsteer_guard.testing.audit.CapturingAuditLog`. Constructors do
    no I/O; :meth:`open` (or the first use) connects, and :meth:`close` is idempotent.
    """

    def open(self) -> None:  # noqa: B027 - optional hook; backends without setup need nothing
        """Connect, and check the store (readers) or create it (writers); idempotent.

        Called implicitly by the first operation. Call it at start-up to fail early and,
        for a spooling log, to replay records a crashed process left in its spool.

        Raises:
            AuditStoreMissingError: a reader found no audit log at the named place.
        """

    @abstractmethod
    def append(self, draft: AuditDraft) -> AuditRecord | None:
        """Seal ``draft`` onto the chain atomically and return the stored record.

        Concurrent appenders (threads, processes, replicas) never fork the chain.
        Appending a draft whose ``id`` is already stored returns the stored record
        instead of adding a duplicate, so at-least-once delivery (the spool) is safe.
        Direct backends always return a record; only a spooling wrapper returns
        ``None``, meaning "durably queued, chained when the backend is back".
        """

    def iter(
        self, where: RecordFilter | None = None, **filters: Unpack[RecordFilterFields]
    ) -> Iterator[AuditRecord]:
        """Yield records in chain order that match ``where``.

        Keyword arguments are a shorthand for :class:`RecordFilter` fields
        (``log.iter(session="s1")``); they override the same fields of ``where``.
        """
        where = where or RecordFilter()
        if filters:
            where = replace(where, **filters)
        return self._iter(where)

    @abstractmethod
    def _iter(self, where: RecordFilter) -> Iterator[AuditRecord]:
        """Backend part of :meth:`iter`: every yielded record must pass ``where.matches``."""

    @abstractmethod
    def get(self, record_id: str) -> AuditRecord | None:
        """Return the record with this id, or None."""

    @abstractmethod
    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyReport:
        """Recompute every hash and link from the checkpoint to the head.

        ``anchor`` (seq, hash), a head kept outside the store, is checked too.
        """

    @abstractmethod
    def prune(self, now: datetime | None = None) -> int:
        """Remove the expired prefix of the chain; return how many records went.

        A record is expired when its ``retention_until`` has passed (or it is older than
        the backend's configured maximum age). Pruning stops at the first record that
        is not expired, because removing from the middle would be a gap.
        """

    @abstractmethod
    def close(self) -> None:
        """Release connections; idempotent."""

    def pending(self) -> int:
        """Records accepted but not chained yet (a spool's backlog); 0 for direct backends."""
        return 0

    # -- retention previews and kept audio (optional; defaults suit in-memory logs) --------
    max_age: timedelta | None = None
    """The store's age limit applied by :meth:`prune`, on top of each record's retention."""

    def prune_preview(self, now: datetime | None = None) -> PrunePreview:
        """What :meth:`prune` would remove at ``now``, without removing anything."""
        now = now or datetime.now(UTC)
        preview = PrunePreview()
        for record in self.iter():
            data = record.to_json_dict()
            if not is_expired(data, now, self.max_age):
                break
            preview = preview.add(record)
        return preview

    def get_audio(self, record_id: str) -> KeptAudio | None:
        """The audio kept for this record (beside the chain, or inline in old records)."""
        record = self.get(record_id)
        return None if record is None else inline_audio(record)

    def audio_due(self, now: datetime | None = None) -> list[tuple[str, datetime]]:
        """(record id, expiry) of kept audio past its retention at ``now``, oldest first."""
        return []

    def prune_audio(self, now: datetime | None = None) -> int:
        """Delete kept audio past its own retention; the chain is untouched. Returns the count."""
        return 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class PrunePreview:
    """The expired prefix :meth:`AuditLog.prune` would remove (a dry run)."""

    count: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    oldest: datetime | None = None
    newest: datetime | None = None

    def add(self, record: AuditRecord) -> PrunePreview:
        """This preview extended by ``record`` (the next record of the prefix)."""
        times = [t for t in (self.oldest, self.newest, record.time) if t is not None]
        return PrunePreview(
            count=self.count + 1,
            first_seq=record.seq if self.first_seq is None else self.first_seq,
            last_seq=record.seq,
            last_hash=record.hash,
            oldest=min(times),
            newest=max(times),
        )


def parse_record(text: str | bytes, *, where: str) -> AuditRecord:
    """Parse stored JSON into a record; unreadable data is an audit error, not a crash."""
    try:
        return AuditRecord.model_validate_json(text)
    except ValidationError as error:
        raise AuditError(
            f"audit record {where} is unreadable ({error.error_count()} invalid fields); "
            "run 'sarsteer-guard audit verify' to locate the damage"
        ) from error


def is_expired(record: dict[str, Any], now: datetime, max_age: timedelta | None) -> bool:
    """Retention test on a stored record's JSON dict."""
    return expired_by(stored_expiry(record, max_age), now)
