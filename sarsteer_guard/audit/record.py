"""Audit records, their canonical form and the hash chain.

A refused (or shadow-refused) turn becomes an :class:`AuditDraft` built by the Guard.
A backend *seals* the draft into an :class:`AuditRecord` (see
:func:`sarsteer_guard.audit.chain.seal`) by assigning ``seq``, ``prev_hash``,
``prior_expiry`` and ``hash`` at the moment it reaches durable storage, so that
records spooled during an outage still get a valid place in the chain.

``hash = sha256(prev_hash + canonical(record without hash))``. The canonical form is
JSON with sorted keys, no whitespace, UTF-8, and finite floats written in Python's
shortest round-trip form; verification recomputes it from the *stored* JSON, never
from a re-validated model, so lenient parsing cannot hide an edit.

Every value is made storable when a draft is built (see
:mod:`sarsteer_guard.audit.storable`), so that a record whose id was handed out can
always be written; a draft where that changed anything carries the flag ``normalised``.
Typed fields (``alpha``, ``latency_ms``...) stay strict.

Layout versions (``record_version``, hashed): 1 is the original layout; 2 adds
``prior_expiry`` (retention evidence for checkpoints) and ``shadow`` (what enforce
would have done in shadow mode). Version 1 records keep verifying and are dumped
without the version 2 keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import secrets
import time as _time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from sarsteer_guard._version import __version__
from sarsteer_guard.audit.storable import (
    NORMALISED_FLAG,
    JsonValue,
    Normaliser,
    json_safe,
    safe_text,
)
from sarsteer_guard.errors import AuditError

__all__ = [
    "GENESIS_HASH",
    "NORMALISED_FLAG",
    "RECORD_VERSION",
    "SALT_ENV",
    "AuditDraft",
    "AuditRecord",
    "Detection",
    "ShadowOutcome",
    "json_safe",
    "safe_text",
]

#: ``prev_hash`` of the first record of every log.
GENESIS_HASH = "0" * 64
#: Environment variable holding the HMAC salt for hashed context fields.
SALT_ENV = "SARSTEER_AUDIT_SALT"
#: Version of the record layout written now, hashed into every record.
RECORD_VERSION = 2

_HEX64 = r"^[0-9a-f]{64}$"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
#: Validation context key: the data is the dump of an already validated draft (sealing),
#: so repairing its strings again would only cost time.
SEALED_CONTEXT = "sealed"
#: Keys added by layout version 2, left out of version 1 dumps.
_V2_KEYS = ("prior_expiry", "shadow")


def new_record_id(now: datetime | None = None) -> str:
    """Return a 32-hex id whose first 12 digits are the Unix time in ms.

    Ids sort by creation time like ULIDs, which keeps exports and ``audit list``
    readable, and the 80 random bits make collisions between replicas negligible.
    """
    ms = int((now.timestamp() if now else _time.time()) * 1000)
    return f"{ms:012x}{secrets.token_hex(10)}"


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """Fixed-width UTC ISO 8601 (``...T12:00:00.000000Z``): sorts as text, hashes stably."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time` (raises ``ValueError`` on other text)."""
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)


def to_utc(value: datetime | None) -> datetime | None:
    """Make ``value`` an aware UTC datetime (naive values are taken as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class _SafeModel(BaseModel):
    """Frozen, strict model whose string inputs are repaired before validation."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or (info.context or {}).get(SEALED_CONTEXT):
            return data
        walker = Normaliser()
        fixed = walker.fields(data)
        if walker.changed and "flags" in cls.model_fields:
            flags = tuple(fixed.get("flags") or ())
            if NORMALISED_FLAG not in flags:
                fixed["flags"] = (*flags, NORMALISED_FLAG)
        return fixed


class Detection(_SafeModel):
    """Why the turn counted as refused: the signals the Guard saw."""

    keyword: str | None = None
    """The refusal keyword/phrase matched in the model's response, if any."""
    score: float | None = None
    """Activation score of the refusal direction, if the Guard computed one."""
    fixed_message: bool = False
    """True when a fixed refusal message was served instead of the model's text."""


class ShadowOutcome(_SafeModel):
    """Shadow mode: what enforce would have done (the steered shadow row's result).

    In shadow mode the listener gets the unsteered answer (the record's ``refused`` and
    ``served_text`` describe that) while a steered row runs beside it; this is that
    row's outcome, which reports and filters count as "refused in shadow".
    """

    refused: bool | None
    """Whether enforce would have refused; None when the shadow row failed."""
    text: str = ""
    """The steered row's text (what enforce would have served before any fixed message)."""
    score: float | None = None
    """Activation score of the refusal direction on the steered row."""
    keyword: str | None = None
    """Refusal keyword matched in the steered row's text."""
    alpha: float | None = None
    """Steering strength the shadow row used."""
    error: str | None = None
    """Why the shadow row failed, when it did."""

    @classmethod
    def from_turn(cls, shadow: Mapping[str, object]) -> ShadowOutcome:
        """Build from the Guard's ``TurnDecision.shadow`` mapping.

        Keys read: ``refused``, ``text``, ``refusal_score``, ``refusal_keyword``,
        ``alpha``, ``error`` (any may be missing). Non-finite numbers become None.
        """
        error = shadow.get("error")
        refused = shadow.get("refused")
        return cls(
            refused=None if error is not None or refused is None else bool(refused),
            text=str(shadow.get("text") or ""),
            score=_finite(shadow.get("refusal_score")),
            keyword=None
            if shadow.get("refusal_keyword") is None
            else str(shadow["refusal_keyword"]),
            alpha=_finite(shadow.get("alpha")),
            error=None if error is None else str(error),
        )


def _finite(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class _AuditFields(_SafeModel):
    """Fields shared by drafts and sealed records."""

    record_version: int = RECORD_VERSION
    id: str = Field(default_factory=new_record_id, min_length=1, max_length=64)
    time: datetime = Field(default_factory=utcnow)
    turn_id: str
    session_id: str
    policy_name: str
    policy_version: str
    policy_hash: str
    rule: str | None = None
    mode: Literal["enforce", "shadow"] = "enforce"
    alpha: float
    model_id: str
    model_fingerprint: str
    vector_set_id: str | None = None
    refused: bool
    """Whether the listener got a refusal (in shadow mode: the unsteered answer's verdict)."""
    detector: Detection = Field(default_factory=Detection)
    response_text: str = ""
    served_text: str = ""
    latency_ms: float = Field(default=0.0, ge=0)
    context: dict[str, JsonValue] = Field(default_factory=dict)
    audio_sha256: str = Field(pattern=_HEX64)
    audio: str | None = None
    """Base64 audio, only when the policy keeps audio."""
    audio_format: Literal["flac", "wav"] | None = None
    flags: tuple[str, ...] = ()
    """Markers such as ``fail_open`` (the guard let the turn through on an error)."""
    retention_until: datetime | None = None
    library_version: str = __version__
    shadow: ShadowOutcome | None = None
    """Shadow mode only: what enforce would have done (version 2 layout)."""

    @field_validator("time")
    @classmethod
    def _time_utc(cls, value: datetime) -> datetime:
        return to_utc(value) or value

    @field_validator("retention_until")
    @classmethod
    def _retention_utc(cls, value: datetime | None) -> datetime | None:
        return to_utc(value)

    @field_serializer("time")
    def _ser_time(self, value: datetime) -> str:
        return format_time(value)

    @field_serializer("retention_until")
    def _ser_retention(self, value: datetime | None) -> str | None:
        return None if value is None else format_time(value)

    def audio_bytes(self) -> bytes | None:
        """Decode the kept audio (None when the policy did not keep it)."""
        return None if self.audio is None else base64.b64decode(self.audio)

    @property
    def enforce_refused(self) -> bool:
        """The policy's verdict: refused (enforce), or would have refused (shadow).

        Shadow records written before the shadow outcome was recorded fall back to
        ``refused``.
        """
        if self.mode == "shadow" and self.shadow is not None:
            return self.shadow.refused is True
        return self.refused


class AuditDraft(_AuditFields):
    """What the Guard builds for a turn; a backend seals it into an :class:`AuditRecord`.

    ``id`` and ``time`` are fixed at creation so a draft that waits in the spool keeps
    the time of the turn, and replaying it twice is recognised by its id.

    Kept audio (``audio``) does not enter the chain: the SQLite and Redis backends
    store it beside the records, keyed by record id, until ``audio_retention_until``
    (see :mod:`sarsteer_guard.audit.audio`); the sealed record keeps ``audio_format``
    and the hashed ``audio_sha256``, so deleting the audio leaves the chain intact.
    """

    audio_retention_until: datetime | None = None
    """When the kept audio may be deleted (the policy's ``audio_retention_days``); unset:
    the store's default audio age. Never later than ``retention_until``. Not sealed."""

    @field_validator("audio_retention_until")
    @classmethod
    def _audio_retention_utc(cls, value: datetime | None) -> datetime | None:
        return to_utc(value)

    @field_serializer("audio_retention_until")
    def _ser_audio_retention(self, value: datetime | None) -> str | None:
        return None if value is None else format_time(value)

    @model_serializer(mode="wrap")
    def _without_unset_audio_retention(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Unset, the key is left out, so drafts (and spool files) read as before the field.
        data = handler(self)
        if self.audio_retention_until is None and isinstance(data, dict):
            data.pop("audio_retention_until", None)
        return data


class AuditRecord(_AuditFields):
    """A sealed, chained audit record. Immutable; there is no update API anywhere."""

    seq: int = Field(ge=1)
    prev_hash: str = Field(pattern=_HEX64)
    hash: str = Field(pattern=_HEX64)
    prior_expiry: datetime | None = None
    """Version 2: the latest time at which any earlier record of the chain may be
    deleted under its retention (None: some earlier record is kept indefinitely).
    Written by the backend when sealing; it lets ``verify`` check, from hashed data
    alone, that records removed before a checkpoint had passed their retention."""

    @field_validator("prior_expiry")
    @classmethod
    def _prior_utc(cls, value: datetime | None) -> datetime | None:
        return to_utc(value)

    @field_serializer("prior_expiry")
    def _ser_prior(self, value: datetime | None) -> str | None:
        return None if value is None else format_time(value)

    @model_serializer(mode="wrap")
    def _layout(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self.record_version < 2 and isinstance(data, dict):
            for key in _V2_KEYS:
                data.pop(key, None)
        return data

    @property
    def policy_ref(self) -> str:
        """``name@version``, as shown to compliance staff."""
        return f"{self.policy_name}@{self.policy_version}"

    def to_json_dict(self) -> dict[str, JsonValue]:
        """The JSON form that is stored and hashed."""
        data: dict[str, JsonValue] = self.model_dump(mode="json")
        return data


def _canon(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditError("audit records cannot hold NaN or infinity; fix the value's source")
        return value
    if isinstance(value, Mapping):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    return value


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """Canonical bytes for hashing: sorted keys, no spaces, UTF-8, finite floats only.

    Raises:
        AuditError: a non-finite float, or text that is not valid Unicode.
    """
    try:
        return json.dumps(
            _canon(value),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError) as error:
        raise AuditError(f"value cannot be written canonically ({error})") from error


def chain_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """``sha256(prev_hash + canonical(fields without "hash"))`` as hex."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(body)).hexdigest()


def draft_to_json(draft: AuditDraft) -> str:
    """Serialise a draft (for the spool)."""
    return draft.model_dump_json()


def draft_from_json(text: str) -> AuditDraft:
    """Inverse of :func:`draft_to_json`."""
    return AuditDraft.model_validate_json(text)


def audio_sha256(data: bytes) -> str:
    """Digest of the turn's audio bytes, recorded even when the audio is not kept."""
    return hashlib.sha256(data).hexdigest()


def encode_audio(data: bytes) -> str:
    """Base64 for the ``audio`` field (FLAC or WAV file bytes)."""
    return base64.b64encode(data).decode("ascii")


def _salt_bytes(salt: bytes | str | None) -> bytes:
    if salt is None:
        salt = os.environ.get(SALT_ENV)
    if not salt:
        raise AuditError(
            f"hashing audit context fields needs a secret salt: set {SALT_ENV} in the environment"
        )
    return safe_text(salt).encode("utf-8") if isinstance(salt, str) else salt


def _split(paths: Iterable[str]) -> list[list[str]]:
    return [p.split(".") for p in paths if p]


def _apply(
    node: dict[str, Any], path: list[str], action: Literal["hash", "drop"], key: bytes
) -> None:
    head, rest = path[0], path[1:]
    if head not in node:
        return
    if rest:
        child = node[head]
        if isinstance(child, dict):
            child = dict(child)
            node[head] = child
            _apply(child, rest, action, key)
        return
    if action == "drop":
        del node[head]
    else:
        raw = canonical_json({"v": json_safe(node[head])})
        node[head] = "hmac-sha256:" + hmac.new(key, raw, hashlib.sha256).hexdigest()


def redact_context(
    context: Mapping[str, Any],
    hash_fields: Iterable[str] = (),
    drop_fields: Iterable[str] = (),
    salt: bytes | str | None = None,
) -> dict[str, JsonValue]:
    """Return a JSON-safe copy of ``context`` with personal fields hashed or dropped.

    Hashing uses HMAC-SHA256 keyed with ``salt`` (default: ``$SARSTEER_AUDIT_SALT``), so
    reviewers can still see that two turns came from the same caller without a plain
    hash being reversible by guessing phone numbers. Field names may be dotted paths
    into nested dicts (``caller.phone``). Drops win over hashes. Hashed values are made
    storable first (:func:`json_safe`), so hashing never fails on odd text; the rest
    is repaired, and the record flagged, when the draft is built.

    Raises:
        AuditError: hash fields were requested but no salt is configured.
    """
    # Text and numbers are repaired (and the record flagged) when the draft is built.
    out: dict[str, Any] = Normaliser(containers_only=True).json(dict(context))
    drops = _split(safe_text(p) for p in drop_fields)
    hashes = _split(safe_text(p) for p in hash_fields)
    for path in drops:
        _apply(out, path, "drop", b"")
    if hashes:
        key = _salt_bytes(salt)
        for path in hashes:
            _apply(out, path, "hash", key)
    return out
