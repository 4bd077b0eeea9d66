"""The :class:`AuditLog` contract and the chain verifier every backend shares.

Append-only by design: there is no update or delete API. The only way records leave
a log is :meth:`AuditLog.prune` (retention), which removes a *prefix* of the chain and
keeps a checkpoint (seq and hash of the last pruned record) so verification starts
there and stays green.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self

from pydantic import ValidationError

from sarsteer_guard.audit.record import (
    GENESIS_HASH,
    AuditDraft,
    AuditRecord,
    chain_hash,
    format_time,
    to_utc,
)
from sarsteer_guard.errors import AuditChainError, AuditError

BreakKind = Literal["edited", "removed", "reordered"]


@dataclass(frozen=True)
class ChainBreak:
    """The first place where the chain does not verify."""

    seq: int
    """Chain position where the break was found (the expected seq for gaps)."""
    record_id: str | None
    kind: BreakKind
    detail: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" + (f" (id {self.record_id})" if self.record_id else "")
        return f"record {self.kind} at {where}: {self.detail}"


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :meth:`AuditLog.verify`."""

    ok: bool
    checked: int
    """Records whose hash and link were checked (before the first break)."""
    checkpoint_seq: int = 0
    """Seq of the last pruned record (0 when nothing was pruned)."""
    last_seq: int = 0
    first_break: ChainBreak | None = None

    def summary(self) -> str:
        """One line for humans and the CLI."""
        if self.ok:
            extra = (
                f" (after checkpoint at seq {self.checkpoint_seq})" if self.checkpoint_seq else ""
            )
            return f"chain intact: {self.checked} records{extra}"
        return f"chain broken: {self.first_break} ({self.checked} records verified before it)"

    def raise_for_break(self) -> None:
        """Raise :class:`AuditChainError` when the chain is broken."""
        if not self.ok:
            raise AuditChainError(
                self.summary() + "; preserve the store as evidence and restore from a backup"
            )


@dataclass(frozen=True)
class RecordFilter:
    """Filters accepted by :meth:`AuditLog.iter` (all optional, combined with AND)."""

    since: datetime | None = None
    until: datetime | None = None
    policy: str | None = None
    """A policy name, or ``name@version``."""
    session: str | None = None
    rule: str | None = None
    refused: bool | None = None

    def matches(self, record: AuditRecord) -> bool:
        """Whether ``record`` passes every set filter (``until`` is exclusive)."""
        if self.since is not None and record.time < _aware(self.since):
            return False
        if self.until is not None and record.time >= _aware(self.until):
            return False
        if self.policy is not None and self.policy not in (record.policy_name, record.policy_ref):
            return False
        if self.session is not None and record.session_id != self.session:
            return False
        if self.rule is not None and record.rule != self.rule:
            return False
        return not (self.refused is not None and record.refused != self.refused)


def _aware(value: datetime) -> datetime:
    return to_utc(value) or value


def time_key(value: datetime) -> str:
    """Fixed-width UTC text of ``value``, comparable with stored ``time`` strings."""
    return format_time(value)


class AuditLog(ABC):
    """A tamper-evident, append-only log of guard decisions.

    Implementations: :class:`~sarsteer_guard.audit.sqlite_log.SqliteAuditLog`,
    :class:`~sarsteer_guard.audit.redis_log.RedisAuditLog`,
    :class:`~sarsteer_guard.audit.spool.SpooledAuditLog` (wraps one of them) and the
    in-memory :class:`~sarsteer_guard.testing.audit.CapturingAuditLog`. Constructors do
    no I/O; connections open on first use and :meth:`close` is idempotent.
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

    @abstractmethod
    def iter(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        policy: str | None = None,
        session: str | None = None,
        rule: str | None = None,
        refused: bool | None = None,
    ) -> Iterator[AuditRecord]:
        """Yield records in chain order that match every given filter."""

    @abstractmethod
    def get(self, record_id: str) -> AuditRecord | None:
        """Return the record with this id, or None."""

    @abstractmethod
    def verify(self) -> VerifyReport:
        """Recompute every hash and link from the checkpoint to the head."""

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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
    now_key = time_key(now)
    until = record.get("retention_until")
    if isinstance(until, str) and until <= now_key:
        return True
    if max_age is not None:
        stamp = record.get("time")
        return isinstance(stamp, str) and stamp <= time_key(now - max_age)
    return False


@dataclass(frozen=True)
class StoredEntry:
    """One stored record as raw text, in storage order, for the verifier."""

    text: str | bytes
    where: str
    """Human-readable storage location (row, stream id) for messages."""


def verify_entries(
    entries: Iterable[StoredEntry],
    *,
    checkpoint: tuple[int, str] = (0, GENESIS_HASH),
    head: tuple[int, str] | None = None,
) -> VerifyReport:
    """Check hashes, seq continuity and links of ``entries`` in storage order.

    Classification of the first break: content that does not match its own hash, or a
    link that does not match the previous record, is *edited*; a seq that jumps ahead
    is *removed* unless the missing seq turns up later, which makes it *reordered*
    (as is a seq that goes backwards). ``head`` (the backend's record of its last
    seq/hash) catches records removed from the end.
    """
    cp_seq, cp_hash = checkpoint
    expected = cp_seq + 1
    prev_hash = cp_hash
    prev_id: str | None = None
    checked = 0
    it = iter(entries)

    def report(brk: ChainBreak) -> VerifyReport:
        return VerifyReport(False, checked, cp_seq, expected - 1, brk)

    for entry in it:
        try:
            data = json.loads(entry.text)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            seq = int(data["seq"])
            rid = str(data.get("id"))
            stored_hash = str(data["hash"])
            own_prev = str(data["prev_hash"])
            recomputed = chain_hash(own_prev, data)
        except (ValueError, KeyError, TypeError, AuditError) as error:
            return report(
                ChainBreak(
                    expected, None, "edited", f"{entry.where} is not a valid record ({error})"
                )
            )
        if recomputed != stored_hash:
            return report(ChainBreak(seq, rid, "edited", "its content no longer matches its hash"))
        if seq != expected:
            if seq < expected:
                return report(
                    ChainBreak(seq, rid, "reordered", f"found at position of seq {expected}")
                )
            for later in it:
                try:
                    later_seq = int(json.loads(later.text)["seq"])
                except (ValueError, KeyError, TypeError):
                    continue
                if later_seq == expected:
                    return report(
                        ChainBreak(
                            expected,
                            None,
                            "reordered",
                            f"seq {expected} is stored after seq {seq} ({later.where})",
                        )
                    )
            missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
            return report(
                ChainBreak(expected, None, "removed", f"{missing} missing before seq {seq}")
            )
        if own_prev != prev_hash:
            if prev_id is None:
                detail = "its prev_hash does not match the checkpoint/genesis hash"
                return report(ChainBreak(seq, rid, "edited", detail))
            return report(
                ChainBreak(
                    seq - 1,
                    prev_id,
                    "edited",
                    f"its hash is not the prev_hash recorded by seq {seq} "
                    "(it was rewritten and re-hashed)",
                )
            )
        prev_hash = stored_hash
        prev_id = rid
        expected += 1
        checked += 1

    last = expected - 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq > last:
            missing = f"seq {last + 1}" if head_seq == last + 1 else f"seq {last + 1}..{head_seq}"
            return report(
                ChainBreak(last + 1, None, "removed", f"{missing} missing at the end of the log")
            )
        if head_seq == last and head_seq > cp_seq and head_hash != prev_hash:
            return report(
                ChainBreak(last, prev_id, "edited", "the last record differs from the log head")
            )
    return VerifyReport(True, checked, cp_seq, last, None)
