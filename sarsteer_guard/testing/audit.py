"""In-memory audit log for integration tests and users' own tests.

:class:`CapturingAuditLog` keeps the full contract, including a real hash chain, so a
test that passes against it exercises the same sealing and verification as
production; only persistence is missing. No torch import.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sarsteer_guard.audit.base import (
    AuditLog,
    RecordFilter,
    StoredEntry,
    VerifyReport,
    is_expired,
)
from sarsteer_guard.audit.chain import ChainHead, StoreMarker, seal
from sarsteer_guard.audit.checkpoint import Checkpoint, new_checkpoint
from sarsteer_guard.audit.keys import AuditKeys
from sarsteer_guard.audit.record import AuditDraft, AuditRecord, Detection, audio_sha256, utcnow
from sarsteer_guard.audit.verify import ChainState, VerifyOptions, verify_chain
from sarsteer_guard.errors import AuditError

__all__ = ["CapturingAuditLog", "sample_draft"]


def sample_draft(**overrides: Any) -> AuditDraft:
    """A valid, plausible draft for tests; any field can be overridden by keyword."""
    fields: dict[str, Any] = {
        "turn_id": "turn-1",
        "session_id": "session-1",
        "policy_name": "default",
        "policy_version": "1",
        "policy_hash": "0" * 64,
        "rule": "weapons",
        "mode": "enforce",
        "alpha": 0.1,
        "model_id": "tiny",
        "model_fingerprint": "f" * 64,
        "vector_set_id": "vs-1",
        "refused": True,
        "detector": Detection(keyword="I cannot assist", score=0.83, fixed_message=False),
        "response_text": "I cannot assist with that request.",
        "served_text": "I cannot assist with that request.",
        "latency_ms": 12.5,
        "context": {"channel": "phone"},
        "audio_sha256": audio_sha256(b"audio"),
    }
    fields.update(overrides)
    return AuditDraft(**fields)


class CapturingAuditLog(AuditLog):
    """Records appends in memory with a real chain; wait for them in async tests.

    ``stored`` holds the stored JSON text of each record in chain order; tests may
    tamper with it to exercise :meth:`verify`.
    """

    def __init__(self, *, keys: AuditKeys | None = None) -> None:
        self.stored: list[str] = []
        self.checkpoint: Checkpoint | None = None
        self.head: ChainHead | None = ChainHead()
        self.marker = StoreMarker.new()
        self.keys = keys
        self._records: list[AuditRecord] = []
        self._by_id: dict[str, AuditRecord] = {}
        self._cond = threading.Condition()
        self.closed = False

    @property
    def records(self) -> list[AuditRecord]:
        """A snapshot of the records currently held, in chain order."""
        with self._cond:
            return list(self._records)

    def append(self, draft: AuditDraft) -> AuditRecord:
        """Seal and keep ``draft`` (idempotent by id); wakes up waiters."""
        with self._cond:
            if self.closed:
                raise AuditError("CapturingAuditLog is closed; create a new one")
            if draft.id in self._by_id:
                return self._by_id[draft.id]
            record, text, self.head = seal(draft, self.head or ChainHead())
            self.stored.append(text)
            self._records.append(record)
            self._by_id[record.id] = record
            self._cond.notify_all()
            return record

    def _iter(self, where: RecordFilter) -> Iterator[AuditRecord]:
        """Matching records from a snapshot (appends during iteration are not seen)."""
        return iter([r for r in self.records if where.matches(r)])

    def get(self, record_id: str) -> AuditRecord | None:
        """Look a record up by id."""
        with self._cond:
            return self._by_id.get(record_id)

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyReport:
        """Verify the stored texts (so tampering with ``stored`` is detected)."""
        with self._cond:
            entries = [StoredEntry(t, f"index {i}") for i, t in enumerate(self.stored)]
            state = ChainState(self.marker, self.head, self.checkpoint)
            return verify_chain(entries, state, VerifyOptions(keys=self.keys, anchor=anchor))

    def prune(self, now: datetime | None = None) -> int:
        """Drop the expired prefix and move the checkpoint."""
        now = now or utcnow()
        with self._cond:
            count = 0
            last: dict[str, object] | None = None
            for text in self.stored:
                data = json.loads(text)
                if not is_expired(data, now, None):
                    break
                last = data
                count += 1
            if last is None:
                return 0
            self.checkpoint = new_checkpoint(
                seq=int(str(last["seq"])),
                digest=str(last["hash"]),
                removed=count,
                reason="retention",
                now=now,
                previous=self.checkpoint,
                store_id=self.marker.store_id,
                max_age=None,
                max_len=None,
                keys=self.keys,
            )
            gone = self._records[:count]
            del self.stored[:count]
            del self._records[:count]
            for record in gone:
                self._by_id.pop(record.id, None)
            return count

    def close(self) -> None:
        """Refuse further appends; records stay readable. Idempotent."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for_blocking(self, n: int, timeout: float = 5.0) -> list[AuditRecord]:
        """Block the calling thread until at least ``n`` records exist.

        Raises:
            TimeoutError: fewer than ``n`` records after ``timeout`` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._records) >= n, timeout=timeout):
                raise TimeoutError(
                    f"expected {n} audit records within {timeout}s, got {len(self._records)}"
                )
            return list(self._records)

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[AuditRecord]:  # noqa: ASYNC109 - same shape as wait_for_blocking; a deadline, not a cancel scope
        """Wait (without blocking the event loop) until at least ``n`` records exist.

        Raises:
            TimeoutError: fewer than ``n`` records after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            records = self.records
            if len(records) >= n:
                return records
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"expected {n} audit records within {timeout}s, got {len(records)}"
                )
            await asyncio.sleep(0.01)
