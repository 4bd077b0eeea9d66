"""Review labels and the access log: what reviewers decided, and who looked at what.

Both are append-only, hash-chained streams beside the audit log
(:mod:`sarsteer_guard.audit.streams`):

- ``labels``: a reviewer's verdict on one audited turn (:data:`LABELS`) with a note,
  naming the reviewer (their token's name) and the time. A later label on the same
  record supersedes the earlier one for filters and counts; the earlier one stays in
  the stream and in the record's history. Nothing is ever edited or erased.
- ``access``: one event per page view, audio play, label, export, verification and
  prune in the review console (actor, role, action, target, details), so compliance
  can answer "who saw this turn, and when".

No torch here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from sarsteer_guard.audit.base import AuditLog, VerifyReport
from sarsteer_guard.audit.record import format_time, new_record_id, safe_text, to_utc, utcnow
from sarsteer_guard.audit.streams import SideStream, open_side_stream
from sarsteer_guard.errors import AuditError

LabelValue = Literal["correct_refusal", "over_refusal", "missed_harm", "unsure"]
#: Every label and how pages name it, in the order forms offer them.
LABELS: dict[LabelValue, str] = {
    "correct_refusal": "correct refusal",
    "over_refusal": "over-refusal",
    "missed_harm": "missed harm",
    "unsure": "unsure",
}
#: Longest reviewer note kept.
MAX_NOTE_CHARS = 2000
_HEX64 = r"^[0-9a-f]{64}$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"

DetailValue = str | int | float | bool | None


class _Entry(BaseModel):
    """Fields every sealed stream entry has."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    id: str = Field(min_length=1, max_length=64)
    time: datetime
    seq: int = Field(ge=1)
    prev_hash: str = Field(pattern=_HEX64)
    hash: str = Field(pattern=_HEX64)

    @field_serializer("time")
    def _ser_time(self, value: datetime) -> str:
        return format_time(value)


class ReviewLabel(_Entry):
    """A reviewer's verdict on one audited turn."""

    kind: Literal["label"] = "label"
    record_id: str = Field(min_length=1, max_length=64)
    label: LabelValue
    note: str = Field(default="", max_length=MAX_NOTE_CHARS)
    reviewer: str = Field(pattern=_NAME)

    @property
    def text(self) -> str:
        """The label as pages show it."""
        return LABELS[self.label]


class AccessEvent(_Entry):
    """One thing a console user did (viewed, played, labelled, exported, pruned...)."""

    kind: Literal["access"] = "access"
    actor: str = Field(min_length=1, max_length=64)
    role: str = Field(min_length=1, max_length=16)
    action: str = Field(min_length=1, max_length=32)
    target: str | None = Field(default=None, max_length=200)
    detail: dict[str, DetailValue] = Field(default_factory=dict)


_T = TypeVar("_T", bound=_Entry)


def _parse(model: type[_T], text: str | bytes, where: str) -> _T:
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        raise AuditError(
            f"{where} is unreadable ({error.error_count()} invalid fields); the console's "
            "chain check names the damage"
        ) from error


class ReviewLog:
    """The label and access streams of one audit store.

    Blocking I/O: call from a worker thread in async code.
    """

    def __init__(self, labels: SideStream, access: SideStream) -> None:
        self.label_stream = labels
        self.access_stream = access

    @classmethod
    def beside(cls, log: AuditLog) -> ReviewLog:
        """The streams stored with ``log`` (same SQLite file or Redis prefix)."""
        return cls(open_side_stream(log, "labels"), open_side_stream(log, "access"))

    def add_label(
        self,
        *,
        record_id: str,
        label: LabelValue,
        reviewer: str,
        note: str = "",
        now: datetime | None = None,
    ) -> ReviewLabel:
        """Append a label (it supersedes earlier labels of the record; they stay).

        Raises:
            AuditError: a field breaks the rules (unknown label, note too long, bad name).
        """
        when = to_utc(now) or utcnow()
        body = {
            "kind": "label",
            "id": new_record_id(when),
            "time": format_time(when),
            "record_id": safe_text(record_id),
            "label": label,
            "note": safe_text(note).strip(),
            "reviewer": safe_text(reviewer),
        }
        self._check(ReviewLabel, body)
        text = self.label_stream.append(body)
        return _parse(ReviewLabel, text, "the new label")

    def record_access(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        target: str | None = None,
        detail: Mapping[str, DetailValue] | None = None,
        now: datetime | None = None,
    ) -> AccessEvent:
        """Append one access event."""
        when = to_utc(now) or utcnow()
        body = {
            "kind": "access",
            "id": new_record_id(when),
            "time": format_time(when),
            "actor": safe_text(actor),
            "role": role,
            "action": action,
            "target": None if target is None else safe_text(target)[:200],
            "detail": {
                safe_text(k): safe_text(v) if isinstance(v, str) else v
                for k, v in (detail or {}).items()
            },
        }
        self._check(AccessEvent, body)
        text = self.access_stream.append(body)
        return _parse(AccessEvent, text, "the new access event")

    @staticmethod
    def _check(model: type[_Entry], body: Mapping[str, object]) -> None:
        """Validate before sealing, so a bad field never takes a chain position."""
        probe = {**body, "seq": 1, "prev_hash": "0" * 64, "hash": "0" * 64}
        try:
            model.model_validate(probe)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise AuditError(f"cannot record {where}: {first['msg']}") from error

    def labels(self, after_seq: int = 0) -> Iterator[ReviewLabel]:
        """Labels in the order they were given."""
        for entry in self.label_stream.entries(after_seq):
            yield _parse(ReviewLabel, entry.text, entry.where)

    def access(self, after_seq: int = 0) -> Iterator[AccessEvent]:
        """Access events in the order they happened."""
        for entry in self.access_stream.entries(after_seq):
            yield _parse(AccessEvent, entry.text, entry.where)

    def verify_labels(self) -> VerifyReport:
        """Check the label stream's chain."""
        return self.label_stream.verify(ReviewLabel)

    def verify_access(self) -> VerifyReport:
        """Check the access stream's chain."""
        return self.access_stream.verify(AccessEvent)

    def close(self) -> None:
        """Close both streams; idempotent."""
        self.label_stream.close()
        self.access_stream.close()
