"""Kept audio, stored beside the chain with its own (shorter) retention.

A policy may keep the turn's audio (``audit.keep_audio``) so reviewers can listen to
what was said. Audio is personal data that should go long before the decision record,
so it does not enter the hash chain: when a backend appends a draft that carries audio,
it moves the audio into a separate table or key, keyed by record id, with its own
expiry, and seals the record without it. The record keeps ``audio_format`` (audio was
kept) and ``audio_sha256``, which the Guard computes over the turn's 16-bit PCM;
FLAC is lossless, so decoding the kept file gives those exact samples back and
:func:`audio_matches_record` can prove the audio is the one the record names.
Deleting audio at its retention (:meth:`AuditLog.prune_audio`) therefore never breaks
``verify``.

Records written before this change may still carry their audio inline (hashed):
:meth:`AuditLog.get_audio` serves that too, but it can only go with its record.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sarsteer_guard.audit.record import AuditDraft, AuditRecord

AudioFormat = Literal["flac", "wav"]

#: Default age at which kept audio is deleted when neither the draft nor the store URL
#: (``audio_max_age_days``) says otherwise: a month, for review, then gone.
DEFAULT_AUDIO_MAX_AGE = timedelta(days=30)

#: HTTP content type of each kept format.
CONTENT_TYPES: dict[str, str] = {"flac": "audio/flac", "wav": "audio/wav"}


@dataclass(frozen=True)
class KeptAudio:
    """One turn's kept audio file and when it may be deleted."""

    record_id: str
    format: AudioFormat
    data: bytes = field(repr=False)
    expires: datetime | None
    """None only for audio inline in an old record (it goes with the record)."""

    @property
    def content_type(self) -> str:
        """``audio/flac`` or ``audio/wav`` (a damaged format field: opaque bytes)."""
        return CONTENT_TYPES.get(self.format, "application/octet-stream")

    @property
    def inline(self) -> bool:
        """True for audio stored inside an (old) hashed record rather than beside it."""
        return self.expires is None


def audio_expiry(draft: AuditDraft, default_max_age: timedelta | None) -> datetime:
    """When ``draft``'s audio may go: its own limit, else the store's, never after the record."""
    limit = draft.audio_retention_until
    if limit is None:
        limit = draft.time + (default_max_age or DEFAULT_AUDIO_MAX_AGE)
    if draft.retention_until is not None:
        limit = min(limit, draft.retention_until)
    return limit


def split_audio(
    draft: AuditDraft, default_max_age: timedelta | None
) -> tuple[AuditDraft, KeptAudio | None]:
    """Take the audio out of ``draft``: (draft to seal, audio to store beside it or None)."""
    if draft.audio is None:
        return draft, None
    kept = KeptAudio(
        record_id=draft.id,
        format=draft.audio_format or "wav",
        data=base64.b64decode(draft.audio),
        expires=audio_expiry(draft, default_max_age),
    )
    # model_copy skips validation: the draft was validated, only the audio leaves.
    return draft.model_copy(update={"audio": None, "audio_format": kept.format}), kept


def inline_audio(record: AuditRecord) -> KeptAudio | None:
    """Audio stored inside an old record, if any."""
    data = record.audio_bytes()
    if data is None:
        return None
    return KeptAudio(record.id, record.audio_format or "wav", data, None)


def audio_matches_record(audio: KeptAudio, record: AuditRecord) -> bool:
    """Whether the kept file decodes to exactly the PCM whose SHA-256 the record holds.

    The Guard hashes the turn's audio as 16-bit little-endian mono PCM and keeps it as
    16-bit FLAC of the same samples, so a match proves the file is the turn's audio; a
    file that does not decode counts as no match.
    """
    import soundfile as sf

    try:
        samples, _ = sf.read(io.BytesIO(audio.data), dtype="int16", always_2d=False)
    except (RuntimeError, ValueError, TypeError, sf.LibsndfileError):
        return False
    if samples.ndim != 1:
        return False
    pcm = samples.astype("<i2").tobytes()
    return hashlib.sha256(pcm).hexdigest() == record.audio_sha256
