"""Typed record filters for :meth:`AuditLog.iter`.

One value instead of keyword arguments repeated in every backend. Backends may push
some fields down to their storage (SQLite indexes) but always re-check
:meth:`RecordFilter.matches` on the hashed content, so an edited index column can
hide nothing that verification would not also report. A new filter field therefore
needs only a field here and a clause in :meth:`RecordFilter.matches`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, TypedDict

from sarsteer_guard.audit.record import to_utc

if TYPE_CHECKING:
    from sarsteer_guard.audit.record import AuditRecord


@dataclass(frozen=True, kw_only=True)
class RecordFilter:
    """Which records to yield (all fields optional, combined with AND)."""

    since: datetime | None = None
    """Records at or after this time."""
    until: datetime | None = None
    """Records before this time (exclusive)."""
    policy: str | None = None
    """A policy name, or ``name@version``."""
    session: str | None = None
    rule: str | None = None
    refused: bool | None = None
    """The served outcome: the listener got a refusal."""
    mode: Literal["enforce", "shadow"] | None = None
    enforce_refused: bool | None = None
    """The policy's verdict: refused in enforce mode or would have refused in shadow mode
    (:attr:`AuditRecord.enforce_refused`)."""
    flag: str | None = None
    """Records carrying this flag (``fail_open``, ``normalised``...)."""
    turn: str | None = None
    """A turn id."""
    after_seq: int | None = None
    """Only records with a greater seq (paging)."""

    def matches(self, record: AuditRecord) -> bool:
        """Whether ``record`` passes every set filter."""
        return all(
            (
                self.since is None or record.time >= _aware(self.since),
                self.until is None or record.time < _aware(self.until),
                self.policy is None or self.policy in (record.policy_name, record.policy_ref),
                self.session is None or record.session_id == self.session,
                self.rule is None or record.rule == self.rule,
                self.refused is None or record.refused == self.refused,
                self.mode is None or record.mode == self.mode,
                self.enforce_refused is None or record.enforce_refused == self.enforce_refused,
                self.flag is None or self.flag in record.flags,
                self.turn is None or record.turn_id == self.turn,
                self.after_seq is None or record.seq > self.after_seq,
            )
        )

    def describe(self) -> str | None:
        """The set filters in one line (``since 2026-05-01 ..., policy kids``), or None."""
        words = []
        for name, value in vars(self).items():
            if value is None:
                continue
            if isinstance(value, datetime):
                text = (to_utc(value) or value).strftime("%Y-%m-%d %H:%M:%S") + " UTC"
            else:
                text = str(value)
            words.append(f"{name.replace('_', ' ')} {text}")
        return ", ".join(words) if words else None


def _aware(value: datetime) -> datetime:
    return to_utc(value) or value


class RecordFilterFields(TypedDict, total=False):
    """:class:`RecordFilter`'s fields as keyword arguments (``log.iter(session="s1")``)."""

    since: datetime | None
    until: datetime | None
    policy: str | None
    session: str | None
    rule: str | None
    refused: bool | None
    mode: Literal["enforce", "shadow"] | None
    enforce_refused: bool | None
    flag: str | None
    turn: str | None
    after_seq: int | None
