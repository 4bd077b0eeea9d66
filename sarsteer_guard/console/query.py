"""The list's filters: parsed from a query string, applied to rows, written back to links.

The fields the audit log itself filters on (time, policy, session, rule, mode, outcome)
become a :class:`~sarsteer_guard.audit.filter.RecordFilter`, so the console and the
``audit`` commands agree on what they mean; the rest (refusal score, context values,
review label, full-text search) are the console's own. A value that cannot be read is
reported on the page and matches nothing, rather than being silently dropped.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode

from sarsteer_guard.audit.filter import RecordFilter
from sarsteer_guard.audit.review import LABELS, ReviewLabel
from sarsteer_guard.cli.audit import parse_when
from sarsteer_guard.console.index import Row
from sarsteer_guard.errors import GuardError

Outcome = Literal["refused", "all"]
#: Query-string names, in the order links write them.
FIELDS = (
    "q",
    "since",
    "until",
    "policy",
    "rule",
    "session",
    "context",
    "mode",
    "outcome",
    "label",
    "score_min",
    "score_max",
)
_MAX_FIELD = 500


@dataclass(frozen=True)
class ListQuery:
    """One set of list filters (all optional; combined with AND)."""

    q: str = ""
    since: str = ""
    until: str = ""
    policy: str = ""
    rule: str = ""
    session: str = ""
    context: str = ""
    """``key=value`` or ``key`` (present) items, space-separated; dotted keys reach into
    nested values; quote values with spaces."""
    mode: str = ""
    outcome: str = "refused"
    """``refused``: turns refused in enforce mode or that would have been in shadow mode."""
    label: str = ""
    """A label, ``unlabelled``, or empty for any."""
    score_min: str = ""
    score_max: str = ""
    page: int = 1
    errors: tuple[str, ...] = ()
    _since: datetime | None = None
    _until: datetime | None = None
    _context: tuple[tuple[tuple[str, ...], str | None], ...] = ()
    _scores: tuple[float | None, float | None] = (None, None)

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> ListQuery:
        """Read a query string (or form); problems go to ``errors``."""
        raw: dict[str, Any] = {
            name: str(params.get(name, "")).strip()[:_MAX_FIELD] for name in FIELDS
        }
        if raw["outcome"] not in ("refused", "all"):
            raw["outcome"] = "refused"
        query = cls(**raw, page=_page(params.get("page")))
        errors: list[str] = []
        since = _time(query.since, "from", errors)
        until = _time(query.until, "until", errors)
        scores = (_number(query.score_min, "score from", errors),
                  _number(query.score_max, "score to", errors))  # fmt: skip
        context = _context(query.context, errors)
        if query.mode not in ("", "enforce", "shadow"):
            errors.append(f"mode {query.mode!r} is neither enforce nor shadow")
        if query.label not in ("", "unlabelled", *LABELS):
            errors.append(f"label {query.label!r} is not a review label")
        return replace(
            query,
            errors=tuple(errors),
            _since=since,
            _until=until,
            _context=context,
            _scores=scores,
        )

    def record_filter(self) -> RecordFilter:
        """The part the audit log filters on (``audit`` commands read it the same way)."""
        return RecordFilter(
            since=self._since,
            until=self._until,
            policy=self.policy or None,
            session=self.session or None,
            rule=self.rule or None,
            mode="enforce" if self.mode == "enforce" else ("shadow" if self.mode else None),
            enforce_refused=True if self.outcome == "refused" else None,
        )

    def matches(self, row: Row, label: ReviewLabel | None, where: RecordFilter) -> bool:
        """Whether ``row`` (with its label in force) passes every filter."""
        if self.errors or not where.matches(row.record):
            return False
        low, high = self._scores
        score = row.score
        if (low is not None or high is not None) and score is None:
            return False
        if score is not None and (
            (low is not None and score < low) or (high is not None and score > high)
        ):
            return False
        if self.label == "unlabelled" and label is not None:
            return False
        if self.label in LABELS and (label is None or label.label != self.label):
            return False
        if not all(_context_has(row.record.context, path, want) for path, want in self._context):
            return False
        return all(word in row.text for word in self.q.casefold().split())

    def params(self, **changes: Any) -> str:
        """This query as a query string (empty fields left out), with ``changes``."""
        values = {name: getattr(self, name) for name in FIELDS} | {"page": self.page}
        values.update(changes)
        kept = [(k, str(v)) for k, v in values.items() if v not in ("", None)]
        kept = [(k, v) for k, v in kept if not (k == "page" and v == "1")]
        kept = [(k, v) for k, v in kept if not (k == "outcome" and v == "refused")]
        return urlencode(kept)

    def items(self) -> list[tuple[str, str]]:
        """Non-empty filters as (name, value), for hidden form fields."""
        return [(name, getattr(self, name)) for name in FIELDS if getattr(self, name)]

    def describe(self) -> str:
        """The filters in one line (``q=..., rule=...``); the default outcome is left out."""
        items = [(k, v) for k, v in self.items() if (k, v) != ("outcome", "refused")]
        return ", ".join(f"{k}={v}" for k, v in items)[:500] or "(no filters)"


def _page(value: object) -> int:
    try:
        return max(1, min(1_000_000, int(str(value))))
    except ValueError:
        return 1


def _time(text: str, what: str, errors: list[str]) -> datetime | None:
    if not text:
        return None
    try:
        return parse_when(text)
    except GuardError:
        errors.append(f"{what} {text!r} is not a date, a time or an age like 7d")
        return None


def _number(text: str, what: str, errors: list[str]) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        errors.append(f"{what} {text!r} is not a number")
        return None


def _context(text: str, errors: list[str]) -> tuple[tuple[tuple[str, ...], str | None], ...]:
    try:
        items = shlex.split(text)
    except ValueError:
        errors.append("context has an unclosed quote")
        return ()
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            errors.append(f"context item {item!r} has no key")
            continue
        out.append((tuple(key.split(".")), value if sep else None))
    return tuple(out)


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _context_has(context: Mapping[str, Any], path: tuple[str, ...], want: str | None) -> bool:
    node: Any = context
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return want is None or _shown(node) == want
