"""The ``eval`` report for trust-and-safety editors: Markdown and a self-contained HTML page.

It answers, in plain words and in this order: how often harmful requests were answered
with and without steering, how often benign ones were, per category, what exactly was
run (model, steering, data, generation, judge), what to be careful about (calibration
clips in the evaluation set, failed or unjudged turns, test models), and a few examples
of what still goes wrong. Numbers come with Wilson 95% intervals and counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sarsteer_guard.report.document import Block, Bullets, Heading, Paragraph, Table

if TYPE_CHECKING:
    from sarsteer_guard.evaluation.evaluate import DataSet, RunResult
    from sarsteer_guard.evaluation.metrics import ArmSummary, Rate

#: How many failing examples of each kind a report shows.
EXAMPLES = 5
#: Characters of a response shown in an example.
EXCERPT = 240


def pct(value: float | None) -> str:
    """``0.125`` -> ``12.5%`` (``n/a`` for None)."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def rate_text(rate: Rate) -> str:
    """``12.5% (95% CI 4.0-30.0%), 3 of 24`` or ``no clips``."""
    if rate.n == 0 or rate.interval is None:
        return "no clips"
    low, high = rate.interval
    return (
        f"{pct(rate.value)} (95% CI {100 * low:.1f}-{100 * high:.1f}%), {rate.answered} of {rate.n}"
    )


def change_text(before: Rate, after: Rate) -> str:
    """Difference in percentage points, signed (``-92.0 points``)."""
    if before.value is None or after.value is None:
        return "n/a"
    delta = 100 * (after.value - before.value)
    return f"{delta:+.1f} points"


@dataclass(frozen=True)
class EvalReportInfo:
    """What the report says around the numbers (the run itself is in ``RunResult``)."""

    model: str
    datasets: Sequence[DataSet]
    overlap: int = 0


def eval_blocks(result: RunResult, info: EvalReportInfo) -> list[Block]:
    """The whole report as blocks (render with ``to_markdown`` / ``to_html``)."""
    before = result.summaries["unsteered"]
    after = result.summaries["steered"]
    blocks: list[Block] = [
        Heading(f"Steering evaluation: {info.model}", 1),
        Paragraph(
            "Each spoken request was answered twice by the same model: once without steering "
            f"and once with {_under_test(result.config['under_test'])}. "
            "Each response was then judged: did it answer the request? "
            f"Judge: {result.judge_description}."
        ),
        Bullets(
            [
                "Attack success rate: the share of harmful requests the model answered. "
                "Lower is better.",
                "Benign response rate: the share of benign requests the model answered. "
                "Higher is better.",
                "95% CI: the range the true rate is likely in (Wilson interval); with few "
                "clips it is wide, so compare ranges, not only the headline numbers.",
            ]
        ),
        Heading("Results"),
        _headline(before, after),
    ]
    blocks += _categories(before, after)
    blocks += _configuration(result, info)
    blocks += _warnings(result, info, before, after)
    blocks += _examples(result)
    return blocks


def _under_test(under_test: Mapping[str, Any]) -> str:
    if under_test.get("mode") == "policy":
        context = under_test.get("context") or {}
        shown = ", ".join(f"{k}={v}" for k, v in context.items()) or "an empty context"
        return f"the policy {under_test.get('policy')} for {shown}"
    return f"steering at {under_test.get('setting')}"


def _headline(before: ArmSummary, after: ArmSummary) -> Table:
    def latency(summary: ArmSummary) -> str:
        lat = summary.latency_ms
        if lat.get("p50") is None:
            return "n/a"
        return f"{lat['p50']:.0f} / {lat['p95']:.0f} ms"

    return Table(
        ["", "Without steering", "With steering", "Change"],
        [
            [
                "Attack success rate (harmful answered; lower is better)",
                rate_text(before.asr),
                rate_text(after.asr),
                change_text(before.asr, after.asr),
            ],
            [
                "Benign response rate (benign answered; higher is better)",
                rate_text(before.brr),
                rate_text(after.brr),
                change_text(before.brr, after.brr),
            ],
            [
                "Response time per turn, median / 95th percentile",
                latency(before),
                latency(after),
                "",
            ],
        ],
    )


def _categories(before: ArmSummary, after: ArmSummary) -> list[Block]:
    out: list[Block] = []
    for title, kind in (
        ("Harmful requests answered, by category (attack success; lower is better)", "asr"),
        ("Benign requests answered, by category (higher is better)", "brr"),
    ):
        first = getattr(before, f"{kind}_by_category")
        second = getattr(after, f"{kind}_by_category")
        if not first and not second:
            continue
        rows = []
        for category in dict.fromkeys([*first, *second]):
            a, b = first.get(category), second.get(category)
            n = (a or b).n if (a or b) is not None else 0
            rows.append(
                [
                    category,
                    str(n),
                    rate_text(a) if a is not None else "n/a",
                    rate_text(b) if b is not None else "n/a",
                ]
            )
        out += [
            Heading(title, 3),
            Table(["Category", "Clips", "Without steering", "With steering"], rows),
        ]
    return out


def _configuration(result: RunResult, info: EvalReportInfo) -> list[Block]:
    config = result.config
    under = config["under_test"]
    rows = [
        ["Model", f"{info.model} (fingerprint {str(config['model_fingerprint'])[:12]})"],
        ["Engine", str(config["engine"])],
    ]
    if under.get("mode") == "policy":
        rows.append(
            [
                "Policy",
                f"{under.get('policy')} ({under.get('policy_file')}, sha256 "
                f"{str(under.get('policy_sha256'))[:12]})",
            ]
        )
        rows.append(
            [
                "Context",
                ", ".join(f"{k}={v}" for k, v in (under.get("context") or {}).items()) or "(empty)",
            ]
        )
    else:
        rows.append(["Steering under test", str(under.get("setting"))])
    rows.append(["Steering applied", _applied(result.observed.get("steered", []))])
    rows.append(["Vectors from", str(under.get("calibration"))])
    rows.append(
        [
            "Generation",
            f"{config['generation']}; turn prompt: {config['prompt'] or 'the calibration prompt'}",
        ]
    )
    rows.append(["Judge", f"{result.judge_description} [{result.judge_id}]"])
    for data in info.datasets:
        skipped = f", {data.skipped} skipped (audio missing)" if data.skipped else ""
        rows.append(
            [f"{data.kind.capitalize()} requests", f"{data.spec}: {data.items} clips{skipped}"]
        )
    rows.append(
        [
            "Per-item results",
            f"{result.results.path} (rerun the same command to "
            "resume; change --judge to re-score without regenerating)",
        ]
    )
    return [Heading("What was run"), Table(["", ""], rows)]


def _applied(observed: Sequence[Mapping[str, Any]]) -> str:
    if not observed:
        return "n/a"
    parts = []
    for entry in observed:
        rule = entry.get("rule") or "policy defaults"
        state = f"alpha {entry.get('alpha'):g}" if entry.get("steered") else "not steered"
        parts.append(f"rule {rule}, {state} ({entry.get('turns')} turns)")
    return "; ".join(parts)


def _warnings(
    result: RunResult, info: EvalReportInfo, before: ArmSummary, after: ArmSummary
) -> list[Block]:
    notes = []
    applied = result.observed.get("steered", [])
    if applied and not any(entry.get("steered") for entry in applied):
        notes.append(
            "The configuration under test steered no turn (alpha 0 for this context), so "
            "both columns measure the unsteered model."
        )
    if info.overlap:
        notes.append(
            f"{info.overlap} evaluated clips are identical to calibration clips: the vectors "
            "were built from them, so these numbers are optimistic. Evaluate on held-out clips."
        )
    failed = before.failed + after.failed
    if failed:
        notes.append(
            f"{failed} turns failed and are left out of the rates (see the errors "
            "in the results file); rerunning retries them."
        )
    unjudged = before.unjudged + after.unjudged
    if unjudged:
        notes.append(f"{unjudged} responses could not be scored by the judge and are left out.")
    if result.test_model:
        notes.append(
            f"{info.model} is a built-in test model: these numbers show the mechanism, they "
            "are not a safety evaluation of any real model."
        )
    notes.append(
        "Response times were measured under evaluation load (many turns at once, long "
        "replies), not in production conditions."
    )
    return [Heading("Read with care"), Bullets(notes)]


def _examples(result: RunResult) -> list[Block]:
    out: list[Block] = []
    for title, kind, answered in (
        ("Harmful requests still answered with steering", "harmful", True),
        ("Benign requests refused with steering", "benign", False),
    ):
        rows = []
        for item in result.items:
            if item.kind != kind:
                continue
            verdict = result.results.verdict(result.judge_id, "steered", item.key)
            record = result.results.turn("steered", item.key)
            if verdict is None or record is None or verdict["answered"] is not answered:
                continue
            text = str(record.get("text") or "")
            excerpt = text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"
            rows.append(
                [
                    item.item.id,
                    item.category,
                    item.request or "(no transcript)",
                    excerpt or "(empty response)",
                ]
            )
            if len(rows) == EXAMPLES:
                break
        if rows:
            out += [
                Heading(f"{title} (first {len(rows)})", 3),
                Table(["Clip", "Category", "Request", "Response (excerpt)"], rows),
            ]
    if out:
        out.insert(0, Heading("Examples to review"))
    return out
