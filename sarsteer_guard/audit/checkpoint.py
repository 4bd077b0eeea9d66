"""Checkpoints: where a pruned chain starts, and why its prefix may be gone.

A checkpoint names the last removed record (seq, hash), when and why the prefix was
removed (``retention``: every removed record had passed its retention or the store's
``max_age``; ``max_len``: Redis trimmed to its configured length), the configuration
that allowed it, the store it belongs to, and a digest of the checkpoint it replaced
(``prev``), so successive checkpoints form their own chain. With an audit key
(:mod:`sarsteer_guard.audit.keys`) it carries ``mac`` = HMAC-SHA256 over all other
fields; an attacker who deletes records cannot produce one.

``legacy`` checkpoints are read from stores written before checkpoints carried any of
this (a bare seq and hash): nothing about them can be authenticated.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from sarsteer_guard.audit.keys import AuditKeys
from sarsteer_guard.audit.record import canonical_json, format_time, to_utc

_DOMAIN = b"sarsteer-guard/audit-checkpoint/v1\x00"

Reason = Literal["retention", "max_len", "legacy"]


class Checkpoint(BaseModel):
    """The start of a pruned chain (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    seq: int = Field(ge=1)
    """Seq of the last removed record."""
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hash of the last removed record (the next record's ``prev_hash``)."""
    time: datetime | None = None
    """When the prefix was removed."""
    reason: Reason = "retention"
    removed: int = Field(default=0, ge=0)
    """Records removed by the prune that wrote this checkpoint."""
    max_age_s: float | None = None
    """The store's age limit when it pruned (seconds), if any."""
    max_len: int | None = None
    """The store's length limit when it trimmed, if any."""
    prev: str | None = None
    """:meth:`digest` of the checkpoint this one replaced."""
    store_id: str | None = None
    key_id: str | None = None
    mac: str | None = None

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return to_utc(value)

    @field_serializer("time")
    def _ser_time(self, value: datetime | None) -> str | None:
        return None if value is None else format_time(value)

    @classmethod
    def legacy(cls, seq: int, digest: str) -> Checkpoint:
        """A bare (seq, hash) checkpoint from a store of the original layout."""
        return cls(seq=seq, hash=digest, reason="legacy")

    def body(self) -> bytes:
        """Canonical bytes the MAC covers (every field but ``mac``)."""
        return _DOMAIN + canonical_json(self.model_dump(mode="json", exclude={"mac"}))

    def digest(self) -> str:
        """sha256 over every field including ``mac`` (what the next checkpoint's ``prev`` holds)."""
        return hashlib.sha256(canonical_json(self.model_dump(mode="json"))).hexdigest()

    def to_json(self) -> str:
        """Stored form."""
        return self.model_dump_json()

    def signed(self, keys: AuditKeys | None) -> Checkpoint:
        """This checkpoint with ``key_id`` and ``mac`` set (unchanged without keys)."""
        if keys is None:
            return self
        unsigned = self.model_copy(update={"key_id": keys.current.key_id, "mac": None})
        return unsigned.model_copy(update={"mac": keys.current.mac(unsigned.body())})

    def mac_problem(self, keys: AuditKeys) -> str | None:
        """Why the MAC does not authenticate this checkpoint, or None when it does."""
        if self.mac is None:
            return (
                "carries no MAC although SARSTEER_AUDIT_KEY is set: it was written by a "
                "pruner without the key, or forged by deleting records; give every pruner "
                "the key, and treat records before it as possibly deleted"
            )
        key = keys.by_id(self.key_id)
        if key is None:
            return (
                f"was signed with key id {self.key_id}, which is neither SARSTEER_AUDIT_KEY "
                "nor SARSTEER_AUDIT_KEY_PREVIOUS"
            )
        if key.mac(self.body()) != self.mac:
            return "has a MAC that does not verify: it was forged or edited"
        return None


def new_checkpoint(
    *,
    seq: int,
    digest: str,
    removed: int,
    reason: Reason,
    now: datetime,
    previous: Checkpoint | None,
    store_id: str | None,
    max_age: timedelta | None,
    max_len: int | None,
    keys: AuditKeys | None,
) -> Checkpoint:
    """The checkpoint a prune writes after removing records up to ``seq``."""
    return Checkpoint(
        seq=seq,
        hash=digest,
        time=now,
        reason=reason,
        removed=removed,
        max_age_s=None if max_age is None else max_age.total_seconds(),
        max_len=max_len if reason == "max_len" else None,
        prev=None if previous is None else previous.digest(),
        store_id=store_id,
    ).signed(keys)
