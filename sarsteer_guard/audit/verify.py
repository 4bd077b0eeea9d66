"""The chain verifier every backend shares.

``verify`` walks the stored records and reports the first place the log cannot be
vouched for, whatever the damage: a record that is not JSON or not a valid record, a
hash that does not match its content, an index column that differs from the hashed
content (it would mislead filtered queries), a gap, a reordering, a removed tail
(against the head), and a checkpoint that does not justify the missing prefix.

Checkpoints (see :mod:`sarsteer_guard.audit.checkpoint`) are checked two ways:

- **with** ``SARSTEER_AUDIT_KEY``: the checkpoint's MAC must verify; a checkpoint
  without one is rejected (anybody who can delete records can write an unsigned one);
- **without** a key: the MAC cannot be checked, so ``verify`` uses the retention
  evidence in the chain itself: the first record after the checkpoint carries, hashed,
  ``prior_expiry`` = until when the records before it had to be kept. If that time has
  not passed, records were deleted early: the chain is reported broken. If no record
  is left after the checkpoint, or that record predates the evidence (layout 1), the
  log is reported *not verified* (never "intact"), and the message says to set the key.

Trimming by Redis ``max_len`` removes records before their retention; without a key it
is accepted only when the verifier's own store URL sets ``max_len`` and at least that
many records follow the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from sarsteer_guard.audit.chain import ChainHead, StoreMarker
from sarsteer_guard.audit.checkpoint import Checkpoint
from sarsteer_guard.audit.keys import AuditKeys
from sarsteer_guard.audit.record import (
    GENESIS_HASH,
    SEALED_CONTEXT,
    AuditRecord,
    chain_hash,
    format_time,
    utcnow,
)
from sarsteer_guard.errors import AuditChainError, AuditError, one_line

BreakKind = Literal[
    "edited",
    "removed",
    "reordered",
    "unreadable",
    "pruned_early",
    "unauthenticated",
    "unverified",
]
#: Kinds about the checkpoint rather than one record.
CHECKPOINT_KINDS = frozenset({"pruned_early", "unauthenticated", "unverified"})
#: How far in the future a checkpoint's time may lie (clock skew between machines).
CLOCK_SKEW = timedelta(minutes=5)
_KEY_HINT = "set SARSTEER_AUDIT_KEY for every pruner and for verify so checkpoints are MACed"


@dataclass(frozen=True)
class ChainBreak:
    """The first place where the log cannot be vouched for."""

    seq: int
    """Chain position where the break was found (the expected seq for gaps; the
    checkpoint's seq for checkpoint problems)."""
    record_id: str | None
    kind: BreakKind
    detail: str

    def __str__(self) -> str:
        if self.kind in CHECKPOINT_KINDS:
            return self.detail
        where = f"seq {self.seq}" + (f" (id {self.record_id})" if self.record_id else "")
        return f"record {self.kind} at {where}: {self.detail}"


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :meth:`AuditLog.verify`."""

    ok: bool
    checked: int
    """Records whose hash and link were checked (before the first break)."""
    checkpoint_seq: int = 0
    """Seq of the last pruned record (0 when nothing was pruned)."""
    last_seq: int = 0
    first_break: ChainBreak | None = None
    head_hash: str | None = None
    """Hash of record ``last_seq`` (to keep as an anchor); None when nothing was ever written."""
    notes: tuple[str, ...] = ()
    """What else verify checked or could not check, one line each."""
    anchor: tuple[int, str] | None = None
    """The anchor that was checked, if any."""
    anchor_problem: str | None = None
    """Why the anchor does not hold (None: it holds, or none was given)."""

    def summary(self) -> str:
        """One line for humans and the CLI."""
        if self.ok:
            extra = (
                f" (after checkpoint at seq {self.checkpoint_seq})" if self.checkpoint_seq else ""
            )
            return f"chain intact: {self.checked} records{extra}"
        brk = self.first_break
        if brk is not None and brk.kind == "unverified":
            return f"chain NOT verified: {brk}"
        if brk is not None and brk.kind in CHECKPOINT_KINDS:
            return f"chain broken: {brk} ({self.checked} records after it verified)"
        return f"chain broken: {brk} ({self.checked} records verified before it)"

    @property
    def vouched(self) -> bool:
        """The chain is intact and the anchor, if one was given, holds."""
        return self.ok and self.anchor_problem is None

    def raise_for_break(self) -> None:
        """Raise :class:`AuditChainError` when the chain is broken or not verified."""
        if not self.ok:
            raise AuditChainError(
                self.summary() + "; preserve the store as evidence and restore from a backup"
            )


@dataclass(frozen=True)
class StoredEntry:
    """One stored record as raw text, in storage order, for the verifier."""

    text: str | bytes
    where: str
    """Human-readable storage location (row, stream id) for messages."""
    columns: Mapping[str, object] | None = None
    """Values the backend stores beside the JSON (index columns, stream fields); each
    must equal the same field of the hashed content."""
    error: str | None = None
    """Set instead of ``text`` when the storage itself failed here (a damaged page)."""


def storage_failure(where: str, error: Exception) -> StoredEntry:
    """The entry a backend yields when reading its storage fails mid-scan."""
    detail = f"the storage cannot be read at {where} ({one_line(error, limit=160)})"
    return StoredEntry("", where, error=detail)


@dataclass(frozen=True)
class ChainState:
    """What a backend stores about its chain besides the records."""

    marker: StoreMarker | None = None
    head: ChainHead | None = None
    checkpoint: Checkpoint | None = None
    damage: str | None = None
    """Why the state itself (checkpoint, head) could not be read, if it could not."""


@dataclass(frozen=True)
class VerifyOptions:
    """The verifier's own knowledge: keys, clock, configuration, anchor."""

    keys: AuditKeys | None = None
    now: datetime = field(default_factory=utcnow)
    max_len: int | None = None
    """The verifier's configured Redis ``max_len`` (from its store URL), if any."""
    anchor: tuple[int, str] | None = None


def _column(key: str, data: Mapping[str, Any]) -> object:
    value = data.get(key)
    return int(value) if isinstance(value, bool) else value


def _columns_problem(entry: StoredEntry, data: Mapping[str, Any]) -> str | None:
    if not entry.columns:
        return None
    wrong = [
        k
        for k, v in entry.columns.items()
        if (None if v is None else str(int(v) if isinstance(v, bool) else v))
        != (None if (h := _column(k, data)) is None else str(h))
    ]
    if not wrong:
        return None
    return (
        f"its stored {', '.join(sorted(wrong))} ({entry.where}) differ from its hashed content, "
        "so filtered queries would give wrong answers"
    )


class _Walk:
    """State of one pass over the stored records (see :func:`verify_chain`)."""

    def __init__(
        self,
        checkpoint: Checkpoint | None,
        anchor_seq: int | None,
        model: type[BaseModel] = AuditRecord,
    ) -> None:
        self.model = model
        self.cp_seq = 0 if checkpoint is None else checkpoint.seq
        self.expected = self.cp_seq + 1
        self.prev_hash = GENESIS_HASH if checkpoint is None else checkpoint.hash
        self.prev_id: str | None = None
        self.checked = 0
        self.first: dict[str, Any] | None = None
        self.anchor_seq = anchor_seq
        self.anchored_hash: str | None = None

    def brk(self, seq: int, rid: str | None, kind: BreakKind, detail: str) -> ChainBreak:
        return ChainBreak(seq, rid, kind, detail)

    def parse(self, entry: StoredEntry) -> tuple[dict[str, Any], int, str] | ChainBreak:
        if entry.error is not None:
            return self.brk(self.expected, None, "unreadable", entry.error)
        try:
            data = json.loads(entry.text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            seq = int(data["seq"])
            stored_hash = str(data["hash"])
            own_prev = str(data["prev_hash"])
            recomputed = chain_hash(own_prev, data)
        except (ValueError, KeyError, TypeError, AuditError, RecursionError) as error:
            detail = f"{entry.where} is not a valid record ({one_line(error, limit=120)})"
            return self.brk(self.expected, None, "unreadable", detail)
        rid = str(data.get("id"))
        if recomputed != stored_hash:
            return self.brk(seq, rid, "edited", "its content no longer matches its hash")
        return data, seq, rid

    def step(self, entry: StoredEntry, rest: Iterator[StoredEntry]) -> ChainBreak | None:
        parsed = self.parse(entry)
        if isinstance(parsed, ChainBreak):
            return parsed
        data, seq, rid = parsed
        if seq != self.expected:
            return self._out_of_order(seq, rid, rest)
        if str(data["prev_hash"]) != self.prev_hash:
            if self.prev_id is None:
                detail = "its prev_hash does not match the checkpoint/genesis hash"
                return self.brk(seq, rid, "edited", detail)
            detail = (
                f"its hash is not the prev_hash recorded by seq {seq} (it was rewritten and "
                "re-hashed)"
            )
            return self.brk(seq - 1, self.prev_id, "edited", detail)
        try:  # only whether it validates matters here: no need to repair its text first
            self.model.model_validate(data, context={SEALED_CONTEXT: True})
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "record"
            detail = (
                f"its hash matches but it is not a readable record ({where}: "
                f"{one_line(first['msg'], limit=100)})"
            )
            return self.brk(seq, rid, "unreadable", detail)
        problem = _columns_problem(entry, data)
        if problem is not None:
            return self.brk(seq, rid, "edited", problem)
        if self.checked == 0:
            self.first = data
        if seq == self.anchor_seq:
            self.anchored_hash = str(data["hash"])
        self.prev_hash = str(data["hash"])
        self.prev_id = rid
        self.expected += 1
        self.checked += 1
        return None

    def _out_of_order(self, seq: int, rid: str, rest: Iterator[StoredEntry]) -> ChainBreak:
        expected = self.expected
        if seq < expected:
            return self.brk(seq, rid, "reordered", f"found at position of seq {expected}")
        for later in rest:
            try:
                later_seq = int(json.loads(later.text)["seq"])
            except (ValueError, KeyError, TypeError):
                continue
            if later_seq == expected:
                detail = f"seq {expected} is stored after seq {seq} ({later.where})"
                return self.brk(expected, None, "reordered", detail)
        missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
        return self.brk(expected, None, "removed", f"{missing} missing before seq {seq}")

    @property
    def last(self) -> int:
        return self.expected - 1


def _head_problem(walk: _Walk, state: ChainState) -> ChainBreak | None:
    head = state.head
    last = walk.last
    if head is None:
        if walk.checked:
            detail = "the log head is missing: records may have been removed from the end"
            return ChainBreak(last, walk.prev_id, "removed", detail)
        return None
    if head.seq > last:
        missing = f"seq {last + 1}" if head.seq == last + 1 else f"seq {last + 1}..{head.seq}"
        detail = f"{missing} missing at the end of the log"
        return ChainBreak(last + 1, None, "removed", detail)
    if head.seq == last and head.hash != walk.prev_hash:
        if walk.checked:
            detail = "the last record differs from the log head"
            return ChainBreak(last, walk.prev_id, "edited", detail)
        detail = "the log head differs from the checkpoint"
        return ChainBreak(last, None, "edited", detail)
    return None


def _evidence(cp: Checkpoint, walk: _Walk, options: VerifyOptions) -> tuple[ChainBreak | None, str]:
    """Keyless check that records up to the checkpoint had passed their retention."""
    upto = f"records up to seq {cp.seq}"
    first = walk.first
    if first is None:
        detail = (
            f"cannot vouch for {upto}: no record is left after the checkpoint to show that "
            f"they had passed their retention; {_KEY_HINT}"
        )
        return ChainBreak(cp.seq, None, "unverified", detail), ""
    if "prior_expiry" not in first:
        detail = (
            f"cannot vouch for {upto}: the record after the checkpoint was written before "
            f"retention evidence was recorded (record_version 1); {_KEY_HINT}"
        )
        return ChainBreak(cp.seq, None, "unverified", detail), ""
    prior = first["prior_expiry"]
    limit = options.now if cp.time is None else min(cp.time, options.now)
    if isinstance(prior, str) and prior <= format_time(limit):
        return None, f"records up to seq {cp.seq} had passed their retention by {prior}"
    remaining = walk.last - cp.seq
    if cp.reason == "max_len" and options.max_len and remaining >= options.max_len:
        return None, f"records up to seq {cp.seq} were trimmed to max_len={options.max_len}"
    kept = "indefinitely" if prior is None else f"until {prior}"
    detail = (
        f"{upto} were removed before their retention passed: record {cp.seq + 1} (hashed) "
        f"says they had to be kept {kept}"
    )
    if cp.reason == "max_len":
        detail += (
            f"; the checkpoint says Redis trimmed to max_len={cp.max_len}: verify with that "
            f"max_len in the store URL, or {_KEY_HINT}"
        )
    return ChainBreak(cp.seq, None, "pruned_early", detail), ""


def _checkpoint_problem(
    cp: Checkpoint, walk: _Walk, state: ChainState, options: VerifyOptions
) -> tuple[ChainBreak | None, str]:
    """Whether the checkpoint justifies the missing prefix; a note on how it was checked."""
    keys = options.keys
    if keys is not None and cp.reason != "legacy":
        problem = cp.mac_problem(keys)
        if problem is None and cp.time is not None and cp.time > options.now + CLOCK_SKEW:
            problem = f"is dated {format_time(cp.time)}, in the future"
        marker = state.marker
        if problem is None and marker is not None and cp.store_id not in (None, marker.store_id):
            problem = f"belongs to another store ({cp.store_id})"
        if problem is not None:
            return ChainBreak(
                cp.seq, None, "unauthenticated", f"checkpoint at seq {cp.seq} {problem}"
            ), ""
        when = "" if cp.time is None else f" at {format_time(cp.time)}"
        return (
            None,
            f"checkpoint at seq {cp.seq} authenticated (key id {cp.key_id}): {cp.reason}{when}",
        )
    brk, how = _evidence(cp, walk, options)
    if brk is not None:
        return brk, ""
    why = (
        "it predates authenticated checkpoints"
        if cp.reason == "legacy"
        else "SARSTEER_AUDIT_KEY is not set"
        if keys is None
        else "it is unsigned"
    )
    return (
        None,
        f"checkpoint at seq {cp.seq}: {how} (checked from the hashed chain; "
        f"MAC not checked: {why})",
    )


def _anchor_problem(anchor: tuple[int, str], walk: _Walk, cp: Checkpoint | None) -> str | None:
    seq, digest = anchor
    cp_seq = 0 if cp is None else cp.seq
    if seq < cp_seq:
        return (
            f"record {seq} was pruned (the chain now starts after seq {cp_seq}), so the anchor "
            "cannot be checked; keep a newer head"
        )
    if seq > walk.last:
        found: str | None = f"is missing (the log ends at seq {walk.last})"
    elif cp is not None and seq == cp_seq:
        found = None if cp.hash == digest else f"has hash {cp.hash} (checkpoint)"
    else:
        found = None if walk.anchored_hash == digest else f"has hash {walk.anchored_hash}"
    if found is None:
        return None
    return (
        f"record {seq} {found}, expected {digest}: the log was rewritten after the anchor "
        "was taken; restore it from a backup and investigate"
    )


def _walk(
    entries: Iterable[StoredEntry],
    state: ChainState,
    options: VerifyOptions,
    model: type[BaseModel],
) -> tuple[_Walk, ChainBreak | None]:
    """Walk every entry, then compare the end with the head."""
    walk = _Walk(state.checkpoint, None if options.anchor is None else options.anchor[0], model)
    it = iter(entries)
    for entry in it:
        brk = walk.step(entry, it)
        if brk is not None:
            return walk, brk
    return walk, _head_problem(walk, state)


def verify_chain(
    entries: Iterable[StoredEntry],
    state: ChainState,
    options: VerifyOptions | None = None,
    *,
    model: type[BaseModel] = AuditRecord,
) -> VerifyReport:
    """Verify ``entries`` (storage order) against the backend's ``state``.

    Never raises for damaged data: every problem becomes the report's ``first_break``
    (a checkpoint problem, being about lower seqs, wins over a later record's).
    ``model`` is what each hashed entry must validate as: audit records, or the
    entries of a review stream (:mod:`sarsteer_guard.audit.review`).
    """
    options = options or VerifyOptions()
    if state.damage is not None:
        damaged = ChainBreak(
            0, None, "unreadable", f"the log's chain state is damaged: {state.damage}"
        )
        return VerifyReport(False, 0, 0, 0, damaged)
    cp = state.checkpoint
    walk, brk = _walk(entries, state, options, model)
    notes: list[str] = []
    if cp is not None and (brk is None or walk.first is not None):
        cp_brk, note = _checkpoint_problem(cp, walk, state, options)
        brk = cp_brk or brk
        if note:
            notes.append(note)
    if state.marker is None:
        notes.append("the store has no marker (written by an older version); a writer adds one")
    cp_seq = 0 if cp is None else cp.seq
    head_hash = walk.prev_hash if walk.last > 0 else None
    if brk is not None:
        return VerifyReport(False, walk.checked, cp_seq, walk.last, brk, head_hash, tuple(notes))
    anchor = options.anchor
    return VerifyReport(
        ok=True,
        checked=walk.checked,
        checkpoint_seq=cp_seq,
        last_seq=walk.last,
        head_hash=head_hash,
        notes=tuple(notes),
        anchor=anchor,
        anchor_problem=None if anchor is None else _anchor_problem(anchor, walk, cp),
    )
