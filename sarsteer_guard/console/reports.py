"""The dashboard (counts and SVG charts) and exports of the filtered set.

Both take the list's filters, so "filter, then look at the dashboard or export"
covers exactly the turns the list shows. Exports read the matched records fresh from
the store (JSONL stays lossless: every line re-hashes) and stream them; DSA statements
are all checked against the Transparency Database's rules before the first byte goes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from sarsteer_guard.audit.dsa import DEFAULT_CATEGORY, DsaSettings, dsa_batches
from sarsteer_guard.audit.export import csv_lines, jsonl_line
from sarsteer_guard.audit.record import AuditRecord
from sarsteer_guard.audit.review import LABELS
from sarsteer_guard.console import charts
from sarsteer_guard.console.index import LabelIndex, Row
from sarsteer_guard.console.pages import matching
from sarsteer_guard.console.query import ListQuery
from sarsteer_guard.console.web import Console, Ctx, error_page, page
from sarsteer_guard.errors import GuardError, one_line

#: Days drawn at most in the per-day chart (the most recent of the filtered range).
MAX_DAYS = 92
#: Policies drawn separately; the rest are stacked as "other".
MAX_STACKS = 6
FORMATS = {"jsonl": "jsonl", "csv": "csv", "dsa": "dsa.jsonl"}
MEDIA = {"jsonl": "application/x-ndjson", "csv": "text/csv", "dsa": "application/x-ndjson"}


@dataclass
class Stats:
    """What the dashboard counts over the filtered turns."""

    turns: int = 0
    enforce: int = 0
    shadow: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    by_rule: Counter[str] = field(default_factory=Counter)
    by_policy: Counter[str] = field(default_factory=Counter)
    per_day: dict[date, Counter[str]] = field(default_factory=dict)

    @property
    def labelled(self) -> int:
        """Turns with a label in force."""
        return sum(self.labels.values())

    @property
    def over_share(self) -> float | None:
        """Share of labelled turns whose label in force is over-refusal (None: none labelled)."""
        return self.labels["over_refusal"] / self.labelled if self.labelled else None


def count(rows: Sequence[Row], labels: LabelIndex) -> Stats:
    """Count ``rows`` (and their labels in force) in one pass."""
    stats = Stats()
    for row in rows:
        record = row.record
        stats.turns += 1
        if record.mode == "shadow":
            stats.shadow += 1
        else:
            stats.enforce += 1
        label = labels.latest(record.id)
        if label is not None:
            stats.labels[label.label] += 1
        stats.by_rule[record.rule or "(no rule)"] += 1
        stats.by_policy[record.policy_ref] += 1
        key = record.policy_ref + (" (shadow)" if record.mode == "shadow" else "")
        stats.per_day.setdefault(record.time.astimezone(UTC).date(), Counter())[key] += 1
    return stats


def day_series(stats: Stats) -> tuple[list[date], list[tuple[str, list[int]]]]:
    """Every day of the (most recent :data:`MAX_DAYS` of the) range, stacked by policy."""
    if not stats.per_day:
        return [], []
    last = max(stats.per_day)
    first = max(min(stats.per_day), last - timedelta(days=MAX_DAYS - 1))
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    totals: Counter[str] = Counter()
    for counts in stats.per_day.values():
        totals.update(counts)
    top = [key for key, _ in totals.most_common(MAX_STACKS)]
    if len(totals) > MAX_STACKS:
        top = [*top[: MAX_STACKS - 1], "other"]
    series = []
    for key in top:
        values = []
        for day in days:
            counts = stats.per_day.get(day, Counter())
            values.append(
                sum(n for k, n in counts.items() if k not in top) if key == "other" else counts[key]
            )
        series.append((key, values))
    return days, series


@page()
async def dashboard_page(request: Request, ctx: Ctx) -> Response:
    """Refusals per policy, rule and day; the over-refusal share; chain status."""
    console = ctx.console
    query = ListQuery.parse(request.query_params)
    rows = await ctx.run(matching, console, query)
    status = await ctx.run(console.chain.status)
    stats = count(rows, console.labels)
    days, series = day_series(stats)
    await ctx.record_access("dashboard", filters=query.describe(), matches=len(rows))
    return ctx.render(
        "dashboard.html",
        query=query,
        stats=stats,
        chain=status,
        labels=LABELS,
        per_day=charts.stacked_days(days, series, title="Refused turns per day, by policy"),
        per_rule=charts.hbars(
            stats.by_rule.most_common(15),
            title="Refused turns by rule",
            unit="refused turns",
            color="#D55E00",
        ),
        per_policy=charts.hbars(
            stats.by_policy.most_common(15),
            title="Refused turns by policy",
            unit="refused turns",
            color="#0072B2",
        ),
        clipped=bool(stats.per_day) and (max(stats.per_day) - min(stats.per_day)).days >= MAX_DAYS,
    )


def _records(console: Console, query: ListQuery, ids: set[str]) -> Iterator[AuditRecord]:
    """The matched records, read fresh from the store (blocking; runs in a worker)."""
    for record in console.log.iter(query.record_filter()):
        if record.id in ids:
            yield record


def _dsa_lines(records: Iterator[AuditRecord], settings: DsaSettings) -> list[str]:
    return [
        json.dumps({"statements": batch}, sort_keys=True, ensure_ascii=False) + "\n"
        for batch in dsa_batches(records, settings)
    ]


@page()
async def export_action(request: Request, ctx: Ctx) -> Response:
    """Download the filtered set as JSONL, CSV or DSA statement batches."""
    console = ctx.console
    query = ListQuery.parse(ctx.form)
    fmt = ctx.form.get("format", "")
    if fmt not in FORMATS or query.errors:
        return error_page(request, 400, "choose jsonl, csv or dsa, and fix the filters")
    rows = await ctx.run(matching, console, query)
    limit = console.settings.reviewer_export_limit
    if not ctx.user.is_admin and len(rows) > limit:
        return error_page(
            request, 403, f"reviewers export at most {limit} records at once ({len(rows)} "
            "match); narrow the filters, or ask an admin to export everything",
        )  # fmt: skip
    category = ctx.form.get("category", "") or DEFAULT_CATEGORY
    try:
        settings = DsaSettings(category=category)
    except GuardError as error:
        return error_page(request, 400, one_line(error))
    ids = {row.record.id for row in rows}
    await ctx.record_access("export", format=fmt, filters=query.describe(), records=len(ids))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = {
        "Content-Disposition": f'attachment; filename="sarsteer-audit-{stamp}.{FORMATS[fmt]}"'
    }
    if fmt == "dsa":
        lines = await ctx.run(_dsa_lines, _records(console, query, ids), settings)
        return Response("".join(lines), media_type=MEDIA[fmt], headers=headers)
    records = _records(console, query, ids)
    body: Iterator[str] = csv_lines(records) if fmt == "csv" else (jsonl_line(r) for r in records)
    return StreamingResponse(body, media_type=MEDIA[fmt], headers=headers)
