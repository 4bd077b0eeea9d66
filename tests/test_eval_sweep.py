"""Sweep logic on constructed results: grid, frontier, recommendation, CSV and the policy file."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from sarsteer_guard.cli import main
from sarsteer_guard.errors import GuardError
from sarsteer_guard.evaluation.metrics import Rate
from sarsteer_guard.evaluation.plan import Setting
from sarsteer_guard.evaluation.sweep import (
    CSV_COLUMNS,
    PAPER_DEFAULT,
    SweepRow,
    fallback,
    grid_settings,
    parse_grid,
    rank,
    recommendation_policy,
    sweep_arms,
    to_csv,
)
from sarsteer_guard.policy import parse_policy, run_policy_tests


def row(arm: str, alpha: float, asr: tuple[int, int], brr: tuple[int, int]) -> SweepRow:
    return SweepRow(
        arm, Setting(alpha, 1.0, 10), Rate(*asr), Rate(*brr), paper_default=alpha == 0.1
    )


ROWS = [
    row("unsteered", 0.0, (18, 20), (19, 20)),
    row("s01", 0.05, (6, 20), (18, 20)),
    row("s02", 0.1, (1, 20), (16, 20)),  # meets 5%, best benign among those that do
    row("s03", 0.2, (0, 20), (12, 20)),  # meets, fewer benign answered
    row("s04", 0.4, (0, 20), (5, 20)),  # dominated by s03
    row("s05", 0.3, (4, 20), (11, 20)),  # dominated by s02
]


def test_frontier_target_and_recommendation() -> None:
    ranked = {r.arm: r for r in rank(ROWS, 0.05)}
    assert {a for a, r in ranked.items() if r.on_frontier} == {"unsteered", "s01", "s02", "s03"}
    assert {a for a, r in ranked.items() if r.meets_target} == {"s02", "s03", "s04"}
    assert [a for a, r in ranked.items() if r.recommended] == ["s02"]
    assert ranked["s02"].paper_default


def test_ties_go_to_the_gentler_alpha() -> None:
    rows = [row("s01", 0.2, (0, 10), (9, 10)), row("s02", 0.1, (0, 10), (9, 10))]
    assert [r.arm for r in rank(rows, 0.0) if r.recommended] == ["s02"]


def test_nothing_meets_the_target_falls_back_to_the_lowest_attack_success() -> None:
    # At a 0% target only s03 and s04 qualify; s03 answers more benign requests.
    assert [r.arm for r in rank(ROWS, 0.0) if r.recommended] == ["s03"]
    none_met = rank(ROWS[:3], 0.0)
    assert not any(r.recommended for r in none_met)
    closest = fallback(none_met)
    assert closest is not None
    assert closest.arm == "s02"


def test_rows_without_both_rates_are_never_recommended() -> None:
    rows = [SweepRow("s01", Setting(0.1), Rate(0, 5), Rate(0, 0))]
    ranked = rank(rows, 0.5)
    assert not ranked[0].recommended
    assert not ranked[0].on_frontier
    assert fallback(ranked) is None


def test_csv_parses_back_to_the_measured_numbers() -> None:
    ranked = rank(ROWS, 0.05)
    table = list(csv.DictReader(io.StringIO(to_csv(ranked))))
    assert tuple(table[0]) == CSV_COLUMNS
    by_arm = {r["setting"]: r for r in table}
    assert by_arm["s02"]["alpha"] == "0.1"
    assert float(by_arm["s02"]["asr"]) == pytest.approx(0.05)
    assert int(by_arm["s02"]["harmful_answered"]) == 1
    assert float(by_arm["s02"]["brr"]) == pytest.approx(0.8)
    assert by_arm["s02"]["recommended"] == "1"
    assert by_arm["s04"]["on_frontier"] == "0"
    assert float(by_arm["s03"]["asr_ci_high"]) == pytest.approx(0.1611, abs=1e-4)


def test_grid_adds_the_paper_default_and_measures_alpha_zero_once() -> None:
    settings = grid_settings([0.0, 0.2], [0.0, 1.0], [5])
    assert Setting(0.0, 0.0, 5) not in settings
    assert PAPER_DEFAULT in settings
    assert len(settings) == 3
    arms = sweep_arms(settings)
    assert arms[0].name == "unsteered"
    assert not arms[0].expect_steering
    assert all(a.expect_steering for a in arms[1:])
    assert [a.context["eval_setting"] for a in arms] == ["unsteered", "s01", "s02", "s03"]


@pytest.mark.parametrize(
    ("alphas", "lambdas", "ks", "message"),
    [
        ([11.0], [1.0], [10], "alpha 11 is outside"),
        ([0.1], [2.0], [10], "lambda 2 is outside"),
        ([0.1], [1.0], [-1], "k -1 is negative"),
    ],
)
def test_grid_rejects_out_of_range_values(
    alphas: list[float], lambdas: list[float], ks: list[int], message: str
) -> None:
    with pytest.raises(GuardError, match=message):
        grid_settings(alphas, lambdas, ks)


def test_grid_values_parse_with_clear_errors() -> None:
    assert parse_grid("0.2, 0.05,0.1", float, "alpha") == [0.05, 0.1, 0.2]
    with pytest.raises(GuardError, match="--k 'ten'"):
        parse_grid("ten", int, "k")


@pytest.mark.parametrize("context", [{"channel": "kids", "age": 9}, {}])
def test_recommendation_is_a_policy_that_lints_and_passes_its_test(
    tmp_path: Path, context: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    chosen = next(r for r in rank(ROWS, 0.05) if r.recommended)
    text = recommendation_policy(
        chosen,
        model="tiny-planted",
        calibration={},
        context=context,
        met=True,
        target_asr=0.05,
        header=["Tuned on VALIDATION data.", "", "second line"],
    )
    assert text.startswith("# Tuned on VALIDATION data.\n#\n# second line\n")
    path = tmp_path / "recommendation.yaml"
    path.write_text(text)
    assert main(["policy", "lint", "--strict", str(path)]) == 0
    assert main(["policy", "test", str(path)]) == 0
    policy = parse_policy(text, source=str(path))
    assert all(result.passed for result in run_policy_tests(policy))
    decision = policy.evaluate(context)
    assert (decision.alpha, decision.lam, decision.k) == (0.1, 1.0, 10)
    if context:
        assert decision.rule == "sweep-recommendation"
        assert policy.evaluate({"channel": "web"}).alpha == 0.0
    capsys.readouterr()
