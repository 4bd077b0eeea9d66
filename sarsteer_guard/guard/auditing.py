"""Auditing decided turns: the draft (the policy's privacy settings applied) and its write."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.audit.record import (
    AuditDraft,
    Detection,
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

log = get_logger(__name__)


class AuditWriter:
    """Writes the audit records of decided turns on a small pool of its own.

    The record id is handed out at once and the write is not awaited: a slow or unreachable
    audit backend (the spool absorbs outages, but a hung socket still takes its timeout) must
    not delay the end of a voice turn, and a failed write never fails the turn.
    :meth:`close` waits for the writes already queued.
    """

    def __init__(self, audit_log: AuditLog, model: ModelFacts, *, workers: int = 2) -> None:
        self._log = audit_log
        self._model = model
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start the pool (idempotent)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="sarsteer-audit")

    def close(self) -> None:
        """Wait for queued writes, then stop the pool (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def submit(
        self, turn: Turn, decision: PolicyDecision, audio: np.ndarray, event: TurnDecision
    ) -> str | None:
        """Queue the turn's record if the policy wants one; return its id (None: not recorded)."""
        record = decision.audit_record
        pool = self._pool
        if record == "none" or (record == "refused" and not event.refused) or pool is None:
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
        try:
            draft = build_audit_draft(
                turn=turn,
                decision=decision,
                event=event,
                audio=audio,
                sample_rate=self._model.sampling_rate,
                model_id=self._model.model_id,
                model_fingerprint=self._model.fingerprint,
                record_id=record_id,
            )
            self._log.append(draft)
        except Exception as error:  # auditing must never take a voice turn down
            metrics.AUDIT_FAILURES.inc()
            log.error("guard.audit_failed", turn_id=turn.turn_id, error=one_line(error))


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
) -> AuditDraft:
    """Build the record for one turn: audio hashed always, kept only if the policy says so."""
    settings = decision.audit
    pcm = float_to_pcm16(audio)
    flags = list(event.flags)
    try:
        context = redact_context(turn.context, settings.hash_fields, settings.drop_fields)
    except AuditError as error:
        # No salt configured: never store the raw values; drop them and say so.
        log.warning("audit.context_hash_unavailable", error=str(error))
        context = redact_context(turn.context, (), (*settings.hash_fields, *settings.drop_fields))
        flags.append("context_hash_unavailable")
    kept_audio = None
    if settings.keep_audio:
        import soundfile as sf

        buffer = io.BytesIO()
        sf.write(buffer, audio, sample_rate, format="FLAC", subtype="PCM_16")
        kept_audio = encode_audio(buffer.getvalue())
    now = utcnow()
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
        alpha=event.alpha,
        model_id=model_id,
        model_fingerprint=model_fingerprint,
        vector_set_id=event.vector_set_id,
        refused=event.refused,
        detector=Detection(
            keyword=event.refusal_keyword,
            score=event.refusal_score,
            fixed_message="refusal_message_served" in event.flags or "fail_closed" in event.flags,
        ),
        response_text=event.model_text,
        served_text=event.text,
        latency_ms=max(0.0, event.timings.total_ms),
        context=context,
        audio_sha256=audio_sha256(pcm),
        audio=kept_audio,
        audio_format="flac" if kept_audio is not None else None,
        audio_retention_until=None
        if kept_audio is None
        else now + timedelta(days=settings.audio_retention_days),
        flags=tuple(flags),
        retention_until=now + timedelta(days=settings.retention_days),
    )
