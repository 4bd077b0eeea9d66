"""Audit report: one self-contained HTML file for compliance staff.

Compliance reviewers read reports in mail clients, archives and air-gapped machines, so
the file carries everything inline (CSS, charts as base64 PNGs), loads nothing from
anywhere, and forbids scripts with a Content-Security-Policy as well as escaping every
piece of record text (responses are model output and may be hostile).
:func:`audit_summary` does the counting in one pass over the records (testable without
matplotlib); :func:`render_audit_report` draws and writes.
"""

from __future__ import annotations

import base64
import heapq
import html
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sarsteer_guard._version import __version__
from sarsteer_guard.errors import AuditError
from sarsteer_guard.report._mpl import mpl_text, new_figure, png_bytes

if TYPE_CHECKING:
    from sarsteer_guard.audit.base import VerifyReport
    from sarsteer_guard.audit.filter import RecordFilter
    from sarsteer_guard.audit.record import AuditRecord

__all__ = [
    "AuditSummary",
    "PolicyCounts",
    "audit_summary",
    "render_audit_html",
    "render_audit_report",
]

#: Flags every report lists, even at zero, because their absence is the finding.
KEY_FLAGS = ("fail_open", "fail_closed")
#: Default number of refused turns listed in the table.
DEFAULT_RECENT = 50
#: Chart resolution; images are shown at most 960 CSS pixels wide.
CHART_DPI = 150
#: Policies drawn separately in the per-day chart; the rest are stacked as "other".
MAX_STACKS = 8
#: Rules drawn separately in the rule chart; the rest are summed as "other".
MAX_RULES = 15
#: Served text longer than this is cut in the table (the full text is in the tooltip).
TEXT_WIDTH = 140

NO_RULE = "(no rule)"


@dataclass
class PolicyCounts:
    """Turns of one ``policy@version`` and how many were refused, by mode."""

    turns: int = 0
    refused: int = 0
    """Refused while enforcing: the user got a refusal."""
    shadow_refused: int = 0
    """Refused in shadow mode (by the steered shadow row, i.e. what enforce would have
    done): logged only, the user got the unsteered answer."""


@dataclass
class AuditSummary:
    """Everything the report shows, counted in one pass over the records."""

    turns: int = 0
    refused: int = 0
    shadow_refused: int = 0
    first_time: datetime | None = None
    last_time: datetime | None = None
    by_policy: dict[str, PolicyCounts] = field(default_factory=dict)
    by_rule: Counter[str] = field(default_factory=Counter)
    """Refused turns (both modes) per matched rule."""
    by_mode: dict[str, PolicyCounts] = field(default_factory=dict)
    flags: Counter[str] = field(default_factory=Counter)
    """Turns carrying each flag; :data:`KEY_FLAGS` are always present."""
    per_day: dict[date, Counter[str]] = field(default_factory=dict)
    """Refused turns per UTC day, keyed by :func:`stack_key` (policy, shadow marked)."""
    alphas: list[tuple[float, bool]] = field(default_factory=list)
    """``(alpha, refused)`` of every turn."""
    recent: list[AuditRecord] = field(default_factory=list)
    """The most recent refused turns, newest first."""


def stack_key(record: AuditRecord) -> str:
    """Label of a refusal in per-policy charts; shadow refusals are kept apart."""
    return record.policy_ref + (" (shadow)" if record.mode == "shadow" else "")


def audit_summary(records: Iterable[AuditRecord], *, recent: int = DEFAULT_RECENT) -> AuditSummary:
    """Count records for the report in one pass (the iterable is consumed once).

    ``recent`` refused turns are kept by record time, not chain order, because records
    spooled during an outage are chained after newer ones.
    """
    summary = AuditSummary(flags=Counter(dict.fromkeys(KEY_FLAGS, 0)))
    newest: list[tuple[datetime, int, AuditRecord]] = []
    for record in records:
        summary.turns += 1
        when = record.time
        if summary.first_time is None or when < summary.first_time:
            summary.first_time = when
        if summary.last_time is None or when > summary.last_time:
            summary.last_time = when
        policy = summary.by_policy.setdefault(record.policy_ref, PolicyCounts())
        mode = summary.by_mode.setdefault(record.mode, PolicyCounts())
        policy.turns += 1
        mode.turns += 1
        summary.flags.update(set(record.flags))
        refused = record.enforce_refused  # shadow mode: what enforce would have done
        summary.alphas.append((record.alpha, refused))
        if not refused:
            continue
        if record.mode == "shadow":
            summary.shadow_refused += 1
            policy.shadow_refused += 1
            mode.shadow_refused += 1
        else:
            summary.refused += 1
            policy.refused += 1
            mode.refused += 1
        summary.by_rule[record.rule or NO_RULE] += 1
        day = when.astimezone(UTC).date()
        summary.per_day.setdefault(day, Counter())[stack_key(record)] += 1
        if recent > 0:
            item = (when, record.seq, record)
            if len(newest) < recent:
                heapq.heappush(newest, item)
            else:
                heapq.heappushpop(newest, item)
    summary.recent = [r for _, _, r in sorted(newest, key=lambda t: (t[0], t[1]), reverse=True)]
    return summary


# --- charts ---------------------------------------------------------------------------


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _day_range(days: Iterable[date]) -> list[date]:
    """Every day from the first to the last, so quiet days show as gaps, not get skipped."""
    ordered = sorted(days)
    span = (ordered[-1] - ordered[0]).days
    return [ordered[0] + timedelta(days=i) for i in range(span + 1)]


def _per_day_chart(summary: AuditSummary) -> bytes:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.ticker import MaxNLocator

    days = _day_range(summary.per_day)
    totals: Counter[str] = Counter()
    for counts in summary.per_day.values():
        totals.update(counts)
    top = [key for key, _ in totals.most_common(MAX_STACKS)]
    if len(totals) > MAX_STACKS:
        top = [*top[: MAX_STACKS - 1], "other"]
    fig = new_figure(10.0, 3.8, CHART_DPI)
    ax = fig.subplots()
    bottom = [0] * len(days)
    palette = [*(f"C{i}" for i in range(10))]
    for index, key in enumerate(top):
        heights = []
        for day in days:
            counts = summary.per_day.get(day, Counter())
            if key == "other":
                heights.append(sum(n for k, n in counts.items() if k not in top))
            else:
                heights.append(counts.get(key, 0))
        color = "0.6" if key == "other" else palette[index % len(palette)]
        ax.bar(
            days,  # type: ignore[arg-type]  # matplotlib's date converter accepts dates; stubs say float
            heights,
            bottom=bottom,
            width=0.8,
            color=color,
            label=mpl_text(key, 48),
            hatch="//" if key.endswith("(shadow)") else None,
            edgecolor="white",
            linewidth=0.5,
        )
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    locator = AutoDateLocator(maxticks=12)  # type: ignore[no-untyped-call]  # untyped in matplotlib
    ax.xaxis.set_major_locator(locator)
    formatter = ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]  # untyped in matplotlib
    ax.xaxis.set_major_formatter(formatter)
    ax.set_ylabel("refused turns")
    ax.set_title("Refused turns per day (UTC), by policy", loc="left", fontsize=11)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return png_bytes(fig)


def _rule_chart(summary: AuditSummary) -> bytes:
    from matplotlib.ticker import MaxNLocator

    common = summary.by_rule.most_common()
    if len(common) > MAX_RULES:
        rest = sum(n for _, n in common[MAX_RULES - 1 :])
        common = [*common[: MAX_RULES - 1], ("other rules", rest)]
    labels = [mpl_text(rule, 36) for rule, _ in common][::-1]
    counts = [n for _, n in common][::-1]
    fig = new_figure(10.0, 0.9 + 0.32 * len(common), CHART_DPI)
    ax = fig.subplots()
    bars = ax.barh(labels, counts, color="tab:red", alpha=0.8, height=0.6)
    ax.bar_label(bars, padding=3, fontsize=8)
    ax.set_xlabel("refused turns (enforce and shadow)")
    ax.set_title("Refused turns by matched policy rule", loc="left", fontsize=11)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max(counts) * 1.12 + 0.5)
    ax.grid(True, axis="x", alpha=0.3)
    return png_bytes(fig)


def _alpha_chart(summary: AuditSummary) -> bytes:
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(10.0, 3.4, CHART_DPI)
    ax = fig.subplots()
    refused = [a for a, r in summary.alphas if r]
    passed = [a for a, r in summary.alphas if not r]
    values = sorted({a for a, _ in summary.alphas})
    if len(values) <= 12:
        # Policies use a few preset strengths: one bar per value reads better than bins.
        labels = [f"{v:g}" for v in values]
        ref = [refused.count(v) for v in values]
        ok = [passed.count(v) for v in values]
        ax.bar(labels, ref, color="tab:red", alpha=0.8, width=0.6, label="refused")
        ax.bar(labels, ok, bottom=ref, color="tab:gray", alpha=0.6, width=0.6, label="answered")
        ax.set_xlabel("steering strength alpha")
    else:
        ax.hist(
            [refused, passed],
            bins=20,
            stacked=True,
            color=["tab:red", "tab:gray"],
            alpha=0.8,
            label=["refused", "answered"],
        )
        ax.set_xlabel("steering strength alpha (20 bins)")
    ax.set_ylabel("turns")
    ax.set_title("Steering strength of audited turns", loc="left", fontsize=11)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return png_bytes(fig)


# --- HTML -----------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;
margin:0 auto;max-width:1000px;padding:24px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d5dae1}
.muted{color:#5b6472}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{border:1px solid #d5dae1;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:22px}.ok{background:#e9f7ee;border-color:#8cc9a0}
.bad{background:#fdecec;border-color:#e29b9b}.warn{background:#fff6e0;border-color:#e6c46b}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{border-bottom:1px solid #e3e7ec;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
td.text{overflow-wrap:anywhere}.nw{white-space:nowrap}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:0 32px}
@media print{body{max-width:none}h2{break-after:avoid}img,tr{break-inside:avoid}}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cut(text: str, width: int = TEXT_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _card(label: str, value: object, css: str = "") -> str:
    return f'<div class="card {css}"><b>{_e(value)}</b>{_e(label)}</div>'


def _count_table(title: str, rows: Iterable[tuple[str, PolicyCounts]], first: str) -> str:
    body = "".join(
        f"<tr><td class=nw>{_e(name)}</td><td class=n>{c.turns}</td><td class=n>{c.refused}</td>"
        f"<td class=n>{c.shadow_refused}</td></tr>"
        for name, c in rows
    )
    return (
        f"<div><h3>{_e(title)}</h3><table><tr><th>{_e(first)}</th><th class=n>turns</th>"
        f"<th class=n>refused</th><th class=n>refused in shadow</th></tr>{body}</table></div>"
    )


def _simple_table(title: str, first: str, rows: Iterable[tuple[str, int]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td class=n>{n}</td></tr>" for k, n in rows)
    return (
        f"<div><h3>{_e(title)}</h3><table><tr><th>{_e(first)}</th><th class=n>turns</th></tr>"
        f"{body}</table></div>"
    )


def _verify_card(verify: VerifyReport | None) -> str:
    if verify is None:
        return _card("hash chain", "not checked", "warn")
    return _card(
        verify.summary(), "intact" if verify.ok else "BROKEN", "ok" if verify.ok else "bad"
    )


def _recent_table(records: list[AuditRecord]) -> str:
    rows = "".join(
        "<tr>"
        f"<td class=nw>{_e(_fmt_time(r.time))}</td>"
        f"<td class=mono>{_e(_cut(r.session_id, 24))}</td>"
        f"<td class=nw>{_e(r.policy_ref)}</td>"
        f"<td class=nw>{_e(r.rule or NO_RULE)}</td>"
        f"<td>{_e(r.mode)}</td>"
        f'<td class=text title="{_e(_cut(r.served_text, 1000))}">{_e(_cut(r.served_text))}</td>'
        f"<td class=mono>{_e(r.id)}</td>"
        "</tr>"
        for r in records
    )
    return (
        "<table><tr><th>time (UTC)</th><th>session</th><th>policy</th><th>rule</th>"
        f"<th>mode</th><th>served text</th><th>record id</th></tr>{rows}</table>"
    )


def _image(data: bytes, alt: str) -> str:
    return f'<img src="{_png_uri(data)}" alt="{_e(alt)}">'


def render_audit_html(
    summary: AuditSummary,
    *,
    title: str = "sarsteer-guard audit report",
    verify: VerifyReport | None = None,
    scope: str | None = None,
    generated: datetime | None = None,
) -> str:
    """Render the report page for ``summary`` (charts drawn here, needs matplotlib).

    Raises:
        GuardError: matplotlib is not installed.
    """
    generated = generated or datetime.now(UTC)
    flags_bad = summary.flags.get("fail_open", 0) + summary.flags.get("fail_closed", 0)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="muted">Records {_e(_fmt_time(summary.first_time))} to '
        f"{_e(_fmt_time(summary.last_time))} UTC"
        + (f" · {_e(scope)}" if scope else "")
        + f" · generated {_e(_fmt_time(generated))} UTC by sarsteer-guard {_e(__version__)}</div>",
        '<div class="cards">',
        _card("audited turns", summary.turns),
        _card("refused (enforced)", summary.refused),
        _card("refused in shadow mode (answered)", summary.shadow_refused),
        *(
            _card(f"{flag} turns", summary.flags.get(flag, 0), "bad" if summary.flags[flag] else "")
            for flag in KEY_FLAGS
        ),
        _verify_card(verify),
        "</div>",
    ]
    if verify is not None:
        parts.append(
            f'<p class="muted">Hash chain: {_e(verify.summary())} (the whole store, '
            "not only the records in this report).</p>"
        )
    if flags_bad:
        parts.append(
            '<p class="card bad">Some turns were served while the guard could not steer '
            "(fail_open) or with a fixed refusal (fail_closed): check vector store health.</p>"
        )
    if summary.turns == 0:
        parts.append("<p>No audit records match this report's filters.</p></body></html>")
        return "".join(parts)

    parts.append("<h2>Summary</h2><div class=grid>")
    parts.append(
        _count_table(
            "By policy",
            sorted(summary.by_policy.items(), key=lambda kv: (-kv[1].turns, kv[0])),
            "policy@version",
        )
    )
    parts.append(_count_table("By mode", sorted(summary.by_mode.items()), "mode"))
    parts.append(_simple_table("Refused turns by rule", "rule", summary.by_rule.most_common()))
    parts.append(
        _simple_table(
            "Flags", "flag", sorted(summary.flags.items(), key=lambda kv: (-kv[1], kv[0]))
        )
    )
    parts.append("</div>")

    parts.append("<h2>Charts</h2>")
    if summary.per_day:
        parts.append(_image(_per_day_chart(summary), "refused turns per day, stacked by policy"))
        parts.append(_image(_rule_chart(summary), "refused turns by rule"))
    else:
        parts.append("<p>No refused turns in this period.</p>")
    parts.append(_image(_alpha_chart(summary), "histogram of steering strength alpha"))

    shown = len(summary.recent)
    parts.append(f"<h2>Most recent refused turns ({shown} shown)</h2>")
    parts.append(
        _recent_table(summary.recent) if shown else "<p>No refused turns in this period.</p>"
    )
    parts.append(
        '<p class="muted">Show one record in full with '
        "<code>sarsteer-guard audit show RECORD_ID</code>.</p></body></html>"
    )
    return "\n".join(parts)


def render_audit_report(
    records: Iterable[AuditRecord],
    path: Path,
    *,
    title: str = "sarsteer-guard audit report",
    verify: VerifyReport | None = None,
    recent: int = DEFAULT_RECENT,
    scope: str | None = None,
) -> Path:
    """Write the self-contained HTML report for ``records`` and return its path.

    Args:
        records: audit records (e.g. ``log.iter(since=...)``), consumed once.
        path: HTML file to write.
        title: page title.
        verify: the store's chain verification, shown as a status card when given.
        recent: how many of the most recent refused turns to list.
        scope: a line describing the filters used, shown under the title.

    Raises:
        GuardError: matplotlib is not installed.
        AuditError: the file cannot be written.
    """
    page = render_audit_html(
        audit_summary(records, recent=recent), title=title, verify=verify, scope=scope
    )
    return write_page(page, Path(path))


def write_page(page: str, path: Path) -> Path:
    """Write ``page`` as UTF-8, turning OS errors into a one-line :class:`AuditError`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise AuditError(f"cannot write {path} ({error.strerror}); choose another --out") from error
    return path


def scope_line(filters: Mapping[str, object] | RecordFilter) -> str | None:
    """Describe the non-empty filters (``since``, ``policy``...) in one line."""
    if not isinstance(filters, Mapping):
        return filters.describe()
    words = []
    for name, value in filters.items():
        if value is None or value == "":
            continue
        text = _fmt_time(value) + " UTC" if isinstance(value, datetime) else str(value)
        words.append(f"{name} {text}")
    return ", ".join(words) if words else None
