"""Chain state every backend keeps: the head, the store marker, retention evidence, sealing.

- The **head** (seq, hash, expiry) names the newest record, so records removed from
  the end are detected, and carries the running *expiry*: the latest time at which
  any record so far may be deleted under its retention. Sealing copies it into the
  next record's hashed ``prior_expiry``, so the first record kept after a prune shows,
  from hashed data, until when everything before it had to be kept.
- The **marker** (format, store id, creation time) is written when a writer creates
  a store. A store without a marker and without records is no audit log at all:
  reading it is an error rather than "chain intact: 0 records", so a typo, a zeroed
  file or a deleted Redis database cannot pass for an empty log.

Expiry states are fixed-width UTC text (sortable), :data:`NEVER` (some record is kept
indefinitely) or :data:`NO_RECORDS`.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sarsteer_guard.audit.record import (
    GENESIS_HASH,
    RECORD_VERSION,
    SEALED_CONTEXT,
    AuditDraft,
    AuditRecord,
    chain_hash,
    format_time,
    parse_time,
    utcnow,
)

#: Expiry state: some record has no retention limit.
NEVER = "never"
#: Expiry state: no record yet.
NO_RECORDS = ""
#: ``format`` value of a store marker.
STORE_FORMAT = "sarsteer-guard-audit"
#: Version of the store layout (marker, checkpoint JSON, head expiry).
STORE_VERSION = 2


@dataclass(frozen=True)
class ChainHead:
    """The newest record's seq and hash, and the running expiry of the whole chain."""

    seq: int = 0
    hash: str = GENESIS_HASH
    expiry: str = NO_RECORDS


@dataclass(frozen=True)
class StoreMarker:
    """Identity of an audit store, written once by the writer that creates it."""

    store_id: str
    created_at: str
    format: str = STORE_FORMAT
    version: int = STORE_VERSION

    @classmethod
    def new(cls, now: datetime | None = None) -> StoreMarker:
        """A marker for a store created now, with a random 128-bit id."""
        return cls(store_id=secrets.token_hex(16), created_at=format_time(now or utcnow()))

    def fields(self) -> dict[str, str]:
        """The marker as flat text fields (SQLite meta rows, Redis hash fields)."""
        return {
            "format": self.format,
            "version": str(self.version),
            "store_id": self.store_id,
            "created_at": self.created_at,
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> StoreMarker | None:
        """Read a marker back; None when ``store_id`` is absent (no marker)."""
        store_id = fields.get("store_id")
        if not store_id:
            return None
        return cls(
            store_id=store_id,
            created_at=fields.get("created_at", ""),
            format=fields.get("format", STORE_FORMAT),
            version=int(fields.get("version") or STORE_VERSION),
        )


def record_expiry(
    time: datetime, retention_until: datetime | None, max_age: timedelta | None
) -> str:
    """When one record may be deleted: the earlier of its retention and ``time + max_age``."""
    limits = [t for t in (retention_until, time + max_age if max_age else None) if t is not None]
    return format_time(min(limits)) if limits else NEVER


def json_object(text: object) -> dict[str, Any]:
    """A stored record's JSON object; ``{}`` when it is not one (damage is verify's job)."""
    if not isinstance(text, str | bytes):
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def stored_expiry(data: dict[str, Any], max_age: timedelta | None) -> str:
    """:func:`record_expiry` of a stored record's JSON dict (unreadable times: never)."""
    try:
        until = data.get("retention_until")
        return record_expiry(
            parse_time(str(data["time"])),
            parse_time(until) if isinstance(until, str) else None,
            max_age,
        )
    except (KeyError, ValueError):
        return NEVER


def later(a: str, b: str) -> str:
    """The later of two expiry states (:data:`NEVER` wins, :data:`NO_RECORDS` loses)."""
    if NEVER in (a, b):
        return NEVER
    return max(a, b)


def expired_by(state: str, now: datetime) -> bool:
    """Whether every record summarised by expiry ``state`` may be deleted at ``now``."""
    if state == NEVER:
        return False
    return state == NO_RECORDS or state <= format_time(now)


def seal(
    draft: AuditDraft, head: ChainHead, *, max_age: timedelta | None = None
) -> tuple[AuditRecord, str, ChainHead]:
    """Give ``draft`` the next chain position after ``head``.

    Returns the record, its stored JSON text (exactly the dict that was hashed, so
    verification of stored data does not depend on how pydantic re-serialises it)
    and the new head. ``max_age`` is the backend's age limit, part of the expiry.
    """
    # The audio's own retention belongs to the audio kept beside the chain, not the record.
    data = draft.model_dump(mode="json", exclude={"audio_retention_until"})
    data["record_version"] = RECORD_VERSION
    if head.expiry == NO_RECORDS:
        data["prior_expiry"] = data["time"]  # nothing before it: vacuous
    else:
        data["prior_expiry"] = None if head.expiry == NEVER else head.expiry
    text = link(data, head)
    own = record_expiry(draft.time, draft.retention_until, max_age)
    new_head = ChainHead(head.seq + 1, data["hash"], later(head.expiry, own))
    record = AuditRecord.model_validate(data, context={SEALED_CONTEXT: True})
    return record, text, new_head


def link(data: dict[str, Any], head: ChainHead) -> str:
    """Put ``data`` after ``head``: set ``seq``, ``prev_hash`` and ``hash`` in place.

    Returns the stored JSON text (exactly the dict that was hashed). Shared by audit
    records (:func:`seal`) and the review streams beside them
    (:mod:`sarsteer_guard.audit.streams`), so one verifier checks them all.
    """
    data["seq"] = head.seq + 1
    data["prev_hash"] = head.hash
    data["hash"] = chain_hash(head.hash, data)
    return json.dumps(data, sort_keys=True, ensure_ascii=False)
