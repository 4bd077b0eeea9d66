"""Turning a decided turn into an audit draft, with the policy's privacy settings applied."""

from __future__ import annotations

import io
from datetime import timedelta

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
from sarsteer_guard.errors import AuditError
from sarsteer_guard.guard.events import Turn, TurnDecision
from sarsteer_guard.log import get_logger
from sarsteer_guard.policy import PolicyDecision

log = get_logger(__name__)


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
        flags=tuple(flags),
        retention_until=now + timedelta(days=settings.retention_days),
    )
