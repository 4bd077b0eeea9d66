"""Auditing decided turns: the draft (the policy's privacy settings applied) and its write."""

from __future__ import annotations

import io
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, TypedDict

import numpy as np
from pydantic import JsonValue

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.audit.record import (
    SALT_ENV,
    AuditDraft,
    Detection,
    ShadowOutcome,
    audio_sha256,
    encode_audio,
    redact_context,
    utcnow,
)
from sarsteer_guard.errors import AuditError, one_line
from sarsteer_guard.guard import metrics
from sarsteer_guard.guard.events import Turn, TurnDecision
from sarsteer_guard.log import get_logger
from sarsteer_guard.policy import PolicyDecision

if TYPE_CHECKING:
    from sarsteer_guard.audit.base import AuditLog
    from sarsteer_guard.models.base import ModelFacts
    from sarsteer_guard.policy import Policy

log = get_logger(__name__)


def unsalted_hash_fields(policy: Policy) -> list[str]:
    """Context fields the policy hashes in audit records while no salt is configured.

    Without ``SARSTEER_AUDIT_SALT`` those fields cannot be hashed, so every record drops
    them (never stores them raw); :func:`warn_unsalted_fields` says so once at start and
    at each reload rather than once per record in the middle of traffic.
    """
    if os.environ.get(SALT_ENV):
        return []
    fields: dict[str, None] = {}
    for decision in policy.possible_decisions():
        if decision.audit_record != "none":
            fields.update(dict.fromkeys(decision.audit.hash_fields))
    return list(fields)


def warn_unsalted_fields(policy: Policy) -> None:
    """Log one warning naming the hash fields every audit record will drop (if any)."""
    fields = unsalted_hash_fields(policy)
    if fields:
        log.warning(
            "guard.audit_salt_missing",
            policy=policy.ref,
            fields=fields,
            detail=f"{SALT_ENV} is not set: the audit records of policy {policy.ref} will "
            f"drop the context fields {', '.join(fields)} instead of hashing them; set "
            f"{SALT_ENV} to a secret (e.g. `python -c 'import secrets; "
            "print(secrets.token_hex(32))'`) to keep them as salted hashes",
        )


class AuditWriter:
    """Writes the audit records of decided turns on a small pool of its own.

    The record id is handed out at once and the write is not awaited: a slow or unreachable
    audit backend (the spool absorbs outages, but a hung socket still takes its timeout) must
    not delay the end of a voice turn, and a failed write never fails the turn.

    Invariant: a record whose id was handed out is written or kept for another try. A
    draft that cannot be built in full is written in a reduced form (flag
    ``audit_degraded``); a draft the log refuses (a full spool, a log without a spool)
    waits in memory, in order, and is retried every ``retry_interval_s``, before any
    newer record and at :meth:`close`. Only what still fails at close, or what exceeds
    ``max_pending``, is lost, and each loss is logged with its record id and counted.
    """

    def __init__(
        self,
        audit_log: AuditLog,
        model: ModelFacts,
        *,
        workers: int = 2,
        retry_interval_s: float = 5.0,
        max_pending: int = 10_000,
    ) -> None:
        self._log = audit_log
        self._model = model
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._retry = _Redelivery(audit_log, retry_interval_s, max_pending)

    @property
    def pending(self) -> int:
        """Records refused by the audit log and waiting in memory for another try."""
        return self._retry.pending

    def start(self) -> None:
        """Start the pool (idempotent)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="sarsteer-audit")

    def close(self) -> None:
        """Wait for queued writes, retry waiting records once more, then stop (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._retry.close()

    def submit(
        self, turn: Turn, decision: PolicyDecision, audio: np.ndarray, event: TurnDecision
    ) -> str | None:
        """Queue the turn's record if the policy wants one; return its id (None: not recorded).

        ``record: refused`` keeps a turn that enforce refused or, in shadow mode, would
        have refused (or whose shadow row failed, so nobody knows): shadow mode exists to
        show what enforcing would do, so its would-be refusals are what must be recorded.
        """
        record = decision.audit_record
        pool = self._pool
        if record == "none" or pool is None:
            return None
        if record == "refused" and not (event.refused or _shadow_flagged(event)):
            return None
        from sarsteer_guard.audit.record import new_record_id

        record_id = new_record_id()
        pool.submit(self._write, turn, decision, audio, event, record_id)
        return record_id

    def _write(
        self,
        turn: Turn,
        decision: PolicyDecision,
        audio: np.ndarray,
        event: TurnDecision,
        record_id: str,
    ) -> None:
        facts = self._model
        fields = _DraftFields(
            turn=turn,
            decision=decision,
            event=event,
            audio=audio,
            sample_rate=facts.sampling_rate,
            model_id=facts.model_id,
            model_fingerprint=facts.fingerprint,
            record_id=record_id,
        )
        try:
            try:
                draft = build_audit_draft(**fields)
            except Exception as error:  # write what can be written rather than nothing
                log.error("guard.audit_degraded", record_id=record_id, error=one_line(error))
                draft = _draft(**fields, degraded=True)
        except Exception as error:  # pragma: no cover - the reduced draft has no free text
            metrics.AUDIT_FAILURES.inc()
            log.error("guard.audit_lost", record_id=record_id, error=one_line(error))
            return
        self._retry.deliver(draft)


#: Extra tries at close, spaced by ``min(interval_s, _CLOSE_RETRY_PAUSE_S)``.
_CLOSE_RETRIES = 3
_CLOSE_RETRY_PAUSE_S = 0.2


class _Redelivery:
    """Appends drafts in order; keeps refused ones in memory and retries them."""

    def __init__(self, audit_log: AuditLog, interval_s: float, max_pending: int) -> None:
        self._log = audit_log
        self._interval_s = interval_s
        self._max_pending = max(1, max_pending)
        self._pending: deque[AuditDraft] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def deliver(self, draft: AuditDraft) -> None:
        """Append ``draft`` after any waiting ones; on failure keep it and retry later.

        While the retry thread runs, a new draft is only queued behind the backlog: the
        thread retries every ``interval_s``, and retrying the whole backlog here would
        block each audit worker on a log that is known to be refusing.
        """
        with self._lock:
            self._pending.append(draft)
            while len(self._pending) > self._max_pending:
                self._lose(self._pending.popleft(), "too many records waiting for the audit log")
            if self._thread is not None:
                return  # the retry thread owns the backlog: no synchronous retry per record
            if not self._flush() and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="sarsteer-audit-retry", daemon=True
                )
                self._thread.start()

    def _flush(self) -> bool:
        """Append waiting drafts in order (lock held); False at the first refusal."""
        while self._pending:
            draft = self._pending[0]
            try:
                self._log.append(draft)
            except Exception as error:  # kept, in order, for the next try
                log.warning(
                    "guard.audit_write_retrying",
                    record_id=draft.id,
                    waiting=len(self._pending),
                    error=one_line(error),
                )
                return False
            self._pending.popleft()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            with self._lock:
                if self._flush():
                    self._thread = None
                    return

    def close(self) -> None:
        """Stop retrying in the background, try a few more times, report what is refused.

        New drafts are not retried per record while the thread runs, so the last ones
        may have been tried only once: close gives them ``_CLOSE_RETRIES`` short tries.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            self._thread = None
            flushed = self._flush()
            for _ in range(_CLOSE_RETRIES):  # a brief outage at shutdown costs no records
                if flushed:
                    break
                time.sleep(min(self._interval_s, _CLOSE_RETRY_PAUSE_S))
                flushed = self._flush()
            if not flushed:
                while self._pending:
                    self._lose(self._pending.popleft(), "the audit log still refused it at close")

    @staticmethod
    def _lose(draft: AuditDraft, why: str) -> None:
        metrics.AUDIT_FAILURES.inc()
        log.error("guard.audit_lost", record_id=draft.id, turn_id=draft.turn_id, reason=why)


def _shadow_flagged(event: TurnDecision) -> bool:
    """A shadow turn that enforce would have refused, or whose shadow row failed."""
    shadow = event.shadow
    if event.mode != "shadow" or shadow is None:
        return False
    return event.enforce_refused or shadow.get("error") is not None


def shadow_record(event: TurnDecision) -> ShadowOutcome | None:
    """The shadow row's outcome for the record (None: enforce mode, or no shadow row ran)."""
    shadow = event.shadow
    if event.mode != "shadow" or shadow is None or not shadow.get("steered"):
        return None
    return ShadowOutcome.from_turn(shadow)


class _DraftFields(TypedDict):
    """The arguments of one turn's audit draft, bound once (full draft, then the fallback)."""

    turn: Turn
    decision: PolicyDecision
    event: TurnDecision
    audio: np.ndarray
    sample_rate: int
    model_id: str
    model_fingerprint: str
    record_id: str


def build_audit_draft(
    *,
    turn: Turn,
    decision: PolicyDecision,
    event: TurnDecision,
    audio: np.ndarray,
    sample_rate: int,
    model_id: str,
    model_fingerprint: str,
    record_id: str | None = None,
    degraded: bool = False,
) -> AuditDraft:
    """Build the record for one turn: audio hashed always, kept only if the policy says so.

    ``degraded=True`` is the record when the full one cannot be built: no context, no kept
    audio, no detector or shadow details, flag ``audit_degraded``; every field left is
    fixed-format or repaired by the draft's own validators, so a record whose id was
    handed out can still be written.
    """
    return _draft(
        turn=turn,
        decision=decision,
        event=event,
        audio=audio,
        sample_rate=sample_rate,
        model_id=model_id,
        model_fingerprint=model_fingerprint,
        record_id=record_id,
        degraded=degraded,
    )


def _draft(
    *,
    turn: Turn,
    decision: PolicyDecision,
    event: TurnDecision,
    audio: np.ndarray,
    sample_rate: int,
    model_id: str,
    model_fingerprint: str,
    record_id: str | None,
    degraded: bool,
) -> AuditDraft:
    """The one builder behind :func:`build_audit_draft` (the writer's fallback calls it)."""
    now = utcnow()
    settings = decision.audit
    flags = [*event.flags, "audit_degraded"] if degraded else list(event.flags)
    details: _Details = (
        {} if degraded else _details(turn, decision, event, audio, sample_rate, flags, now)
    )
    return AuditDraft(
        **({"id": record_id} if record_id is not None else {}),
        time=now,
        turn_id=turn.turn_id,
        session_id=turn.session_id,
        policy_name=event.policy,
        policy_version=event.policy_version,
        policy_hash=event.policy_hash,
        rule=event.rule,
        mode=event.mode,
        alpha=event.alpha if np.isfinite(event.alpha) else 0.0,
        model_id=model_id,
        model_fingerprint=model_fingerprint,
        vector_set_id=event.vector_set_id,
        refused=event.refused,
        response_text=event.model_text,
        served_text=event.text,
        audio_sha256=audio_sha256(float_to_pcm16(audio)),
        flags=tuple(flags),
        retention_until=now + timedelta(days=settings.retention_days),
        **details,
    )


class _Details(TypedDict, total=False):
    """The fields a degraded record leaves out."""

    detector: Detection
    latency_ms: float
    context: dict[str, JsonValue]
    audio: str | None
    audio_format: Literal["flac", "wav"] | None
    audio_retention_until: datetime | None
    shadow: ShadowOutcome | None


def _details(
    turn: Turn,
    decision: PolicyDecision,
    event: TurnDecision,
    audio: np.ndarray,
    sample_rate: int,
    flags: list[str],
    now: datetime,
) -> _Details:
    """The fields a degraded record leaves out (context, kept audio, detector, shadow)."""
    settings = decision.audit
    try:
        context = redact_context(turn.context, settings.hash_fields, settings.drop_fields)
    except AuditError as error:
        # No salt configured: never store the raw values; drop them and flag the record.
        # The fields were named once, at start (warn_unsalted_fields), not per record.
        log.debug("audit.context_hash_unavailable", error=str(error))
        context = redact_context(turn.context, (), (*settings.hash_fields, *settings.drop_fields))
        flags.append("context_hash_unavailable")
    kept_audio = None
    if settings.keep_audio:
        import soundfile as sf

        buffer = io.BytesIO()
        sf.write(buffer, audio, sample_rate, format="FLAC", subtype="PCM_16")
        kept_audio = encode_audio(buffer.getvalue())
    return {
        "detector": Detection(
            keyword=event.refusal_keyword,
            score=event.refusal_score,
            fixed_message="refusal_message_served" in event.flags or "fail_closed" in event.flags,
        ),
        "latency_ms": max(0.0, event.timings.total_ms),
        "context": context,
        "audio": kept_audio,
        "audio_format": "flac" if kept_audio is not None else None,
        "audio_retention_until": None
        if kept_audio is None
        else now + timedelta(days=settings.audio_retention_days),
        "shadow": shadow_record(event),
    }
