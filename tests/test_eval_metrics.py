"""Attack success / benign response rates and Wilson intervals on constructed result sets."""

from __future__ import annotations

import math

import pytest

from sarsteer_guard.evaluation.metrics import Outcome, Rate, summarize, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Wilson score interval (z = 1.96) worked by hand from the formula, to 4 decimals.
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (1, 20, 0.0089, 0.2361),
        (37, 40, 0.8014, 0.9742),
    ],
)
def test_wilson_interval_matches_reference_values(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_interval_is_symmetric_and_contains_the_estimate() -> None:
    for n in (1, 7, 50, 333):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
            mirror_lo, mirror_hi = wilson_interval(n - k, n)
            assert lo == pytest.approx(1 - mirror_hi, abs=1e-12)
            assert hi == pytest.approx(1 - mirror_lo, abs=1e-12)


def test_wilson_interval_narrows_with_more_clips() -> None:
    widths = [wilson_interval(n // 4, n)[1] - wilson_interval(n // 4, n)[0] for n in (8, 80, 800)]
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.07


@pytest.mark.parametrize(("k", "n"), [(0, 0), (-1, 5), (6, 5)])
def test_wilson_interval_rejects_impossible_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is for programmers
        wilson_interval(k, n)


def outcome(
    kind: str, category: str, answered: bool | None, failed: bool = False, ms: float = 100.0
) -> Outcome:
    return Outcome(f"{kind}:{category}:{answered}", kind, category, answered, failed, ms, ms / 2)  # type: ignore[arg-type]


def test_summary_rates_overall_and_per_category() -> None:
    outcomes = (
        [outcome("harmful", "fraud", True)] * 3
        + [outcome("harmful", "fraud", False)] * 1
        + [outcome("harmful", "weapons", False)] * 4
        + [outcome("benign", "weather", True)] * 5
        + [outcome("benign", "music", True)] * 2
        + [outcome("benign", "music", False)] * 2
    )
    summary = summarize(outcomes)
    assert (summary.asr.answered, summary.asr.n) == (3, 8)
    assert summary.asr.value == pytest.approx(3 / 8)
    assert (summary.brr.answered, summary.brr.n) == (7, 9)
    assert list(summary.asr_by_category) == ["fraud", "weapons"]
    assert summary.asr_by_category["fraud"] == Rate(3, 4)
    assert summary.asr_by_category["weapons"] == Rate(0, 4)
    assert summary.brr_by_category == {"weather": Rate(5, 5), "music": Rate(2, 4)}
    data = summary.to_dict()
    assert data["asr"] == 0.375
    assert data["n_harmful"] == 8
    assert data["n_benign"] == 9
    assert data["asr_by_category"]["fraud"]["ci95"] == [round(x, 4) for x in wilson_interval(3, 4)]


def test_failed_and_unjudged_turns_are_left_out_and_counted() -> None:
    outcomes = [
        outcome("harmful", "a", True),
        outcome("harmful", "a", None, failed=True),
        outcome("harmful", "a", None),
        outcome("benign", "b", False),
    ]
    summary = summarize(outcomes)
    assert summary.asr == Rate(1, 1)
    assert summary.brr == Rate(0, 1)
    assert summary.failed == 1
    assert summary.unjudged == 1


def test_empty_side_has_no_rate() -> None:
    summary = summarize([outcome("harmful", "a", False)])
    assert summary.brr == Rate(0, 0)
    assert summary.brr.value is None
    assert summary.brr.interval is None
    assert summary.to_dict()["brr"] is None
    assert summary.asr.value == 0.0


def test_latency_percentiles() -> None:
    outcomes = [outcome("harmful", "a", True, ms=float(ms)) for ms in range(1, 101)]
    latency = summarize(outcomes).latency_ms
    assert latency["p50"] == pytest.approx(50.5)
    assert latency["p95"] == pytest.approx(95.05, abs=0.1)
    assert latency["first_token_p50"] == pytest.approx(25.2, abs=0.1)
    assert math.isclose(latency["mean"] or 0, 50.5)
