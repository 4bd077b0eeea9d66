"""What the console keeps in memory: records, labels and the last chain check.

The audit log is append-only, so the console reads it once and then only what was
appended since (``after_seq``), which keeps list and dashboard pages fast on large
logs; a prune (the oldest record gone) triggers a full reload. Pages that show one
record in full (detail, audio, export) read the store itself, so what a reviewer sees
of a record, and its hash check, is never stale.

Blocking I/O: call from a worker thread in async code.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sarsteer_guard.audit.base import AuditLog, VerifyReport
from sarsteer_guard.audit.record import AuditRecord, chain_hash
from sarsteer_guard.audit.review import ReviewLabel, ReviewLog
from sarsteer_guard.errors import GuardError, one_line

#: Rows kept in memory at most (the newest); older ones are left out of lists and counts.
MAX_ROWS = 500_000


@dataclass(frozen=True)
class Row:
    """One record as lists and the dashboard need it (kept audio is not held)."""

    record: AuditRecord
    text: str
    """Response, served and shadow text, case-folded, for full-text search."""

    @classmethod
    def of(cls, record: AuditRecord) -> Row:
        """A row for ``record`` (inline audio of old records is dropped from memory)."""
        if record.audio is not None:
            record = record.model_copy(update={"audio": None})
        shadow = record.shadow.text if record.shadow is not None else ""
        text = "\n".join((record.response_text, record.served_text, shadow)).casefold()
        return cls(record, text)

    @property
    def score(self) -> float | None:
        """The refusal score shown: the steered row's in shadow mode."""
        record = self.record
        if record.mode == "shadow" and record.shadow is not None:
            return record.shadow.score
        return record.detector.score


class RecordIndex:
    """Every record of the log, newest first, caught up on each :meth:`refresh`."""

    def __init__(self, log: AuditLog, *, max_rows: int = MAX_ROWS) -> None:
        self.log = log
        self.max_rows = max_rows
        self.rows: list[Row] = []
        self.by_id: dict[str, Row] = {}
        self.by_seq: dict[int, Row] = {}
        self.last_seq = 0
        self.problem: str | None = None
        """Why the log could not be read to its end, if it could not."""
        self.truncated = False
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read what was appended since the last refresh; reload after a prune."""
        with self._lock:
            oldest = min(self.by_seq) if self.by_seq else None
            if oldest is not None and self.log.get(self.by_seq[oldest].record.id) is None:
                self._reset()
            added: list[Row] = []
            try:
                for record in self.log.iter(after_seq=self.last_seq):
                    row = Row.of(record)
                    added.append(row)
                    self.last_seq = max(self.last_seq, record.seq)
                self.problem = None
            except GuardError as error:
                self.problem = one_line(error)
            if added:
                self._add(added)

    def _reset(self) -> None:
        self.rows, self.by_id, self.by_seq = [], {}, {}
        self.last_seq = 0
        self.truncated = False

    def _add(self, added: list[Row]) -> None:
        for row in added:
            self.by_id[row.record.id] = row
            self.by_seq[row.record.seq] = row
        rows = self.rows + added
        rows.sort(key=lambda r: (r.record.time, r.record.seq), reverse=True)
        if len(rows) > self.max_rows:
            for row in rows[self.max_rows :]:
                self.by_id.pop(row.record.id, None)
                self.by_seq.pop(row.record.seq, None)
            rows = rows[: self.max_rows]
            self.truncated = True
        self.rows = rows

    def policies(self) -> list[str]:
        """Every ``name@version`` and bare name seen, sorted (for filter menus)."""
        refs = {r.record.policy_ref for r in self.rows} | {r.record.policy_name for r in self.rows}
        return sorted(refs)

    def rules(self) -> list[str]:
        """Every matched rule seen, sorted."""
        return sorted({r.record.rule for r in self.rows if r.record.rule})


class LabelIndex:
    """Every review label, by record, caught up on each :meth:`refresh`."""

    def __init__(self, review: ReviewLog) -> None:
        self.review = review
        self.by_record: dict[str, list[ReviewLabel]] = {}
        self.last_seq = 0
        self.problem: str | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read labels given since the last refresh."""
        with self._lock:
            try:
                for label in self.review.labels(self.last_seq):
                    self.by_record.setdefault(label.record_id, []).append(label)
                    self.last_seq = label.seq
                self.problem = None
            except GuardError as error:
                self.problem = one_line(error)

    def latest(self, record_id: str) -> ReviewLabel | None:
        """The label in force for a record (the latest given), if any."""
        labels = self.by_record.get(record_id)
        return labels[-1] if labels else None

    def history(self, record_id: str) -> list[ReviewLabel]:
        """Every label of a record, newest first."""
        return list(reversed(self.by_record.get(record_id, [])))


@dataclass(frozen=True)
class ChainStatus:
    """The last verification of the audit chain and of the two review streams."""

    checked_at: datetime
    records: VerifyReport | None
    labels: VerifyReport | None
    access: VerifyReport | None
    error: str | None = None
    """Why verification itself failed (the store could not be read)."""

    @property
    def ok(self) -> bool:
        """Everything verified."""
        reports = (self.records, self.labels, self.access)
        return self.error is None and all(r is not None and r.ok for r in reports)


@dataclass
class ChainMonitor:
    """Runs verification at most every ``max_age_s`` seconds and shares the result."""

    log: AuditLog
    review: ReviewLog
    max_age_s: float
    _status: ChainStatus | None = None
    _at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self, *, force: bool = False) -> ChainStatus:
        """The last result, re-verifying first when it is stale (or ``force``)."""
        with self._lock:
            fresh = time.monotonic() - self._at < self.max_age_s
            if self._status is not None and fresh and not force:
                return self._status
            self._status = self._verify()
            self._at = time.monotonic()
            return self._status

    def _verify(self) -> ChainStatus:
        now = datetime.now(UTC)
        try:
            return ChainStatus(
                now, self.log.verify(), self.review.verify_labels(), self.review.verify_access()
            )
        except GuardError as error:
            return ChainStatus(now, None, None, None, error=one_line(error))


def local_problems(log: AuditLog, record: AuditRecord, index: RecordIndex) -> list[str]:
    """Fresh checks of one record: its own hash, and its links to both neighbours.

    Cheap enough for every detail page, unlike a whole-chain verification.
    """
    problems = []
    if chain_hash(record.prev_hash, record.to_json_dict()) != record.hash:
        problems.append("its content no longer matches its hash: it was edited after sealing")
    for seq in (record.seq - 1, record.seq + 1):
        row = index.by_seq.get(seq)
        try:
            neighbour = None if row is None else log.get(row.record.id)
        except GuardError:
            problems.append(f"record {seq} next to it cannot be read")
            continue
        if neighbour is None:
            continue
        if seq < record.seq and neighbour.hash != record.prev_hash:
            problems.append(f"its prev_hash is not the hash of record {seq}")
        if seq > record.seq and neighbour.prev_hash != record.hash:
            problems.append(f"record {seq} does not link to it (its prev_hash differs)")
    return problems
