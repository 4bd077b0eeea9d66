"""Grid sweeps: which alpha x lambda x k keeps attacks out and benign requests answered.

A sweep runs every setting of the grid plus "no steering" as arms of ONE evaluation
run (one Guard, one model): the Guard computes the vectors once per (lambda, k) at start,
calibrating the model once and re-projecting the kept activations for the other pairs,
and every alpha of a pair shares its vector set. Each setting then gets its attack
success rate (ASR) and benign response rate (BRR) on the VALIDATION data given.

The recommendation is the setting whose ASR is at or below the target with the highest
BRR (ties: the gentler alpha, then the lower ASR). It is tuned on validation data by
design: confirm it with ``sarsteer-guard eval`` on held-out clips before trusting it.
No torch here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from sarsteer_guard.defaults import DEFAULT_ALPHA, DEFAULT_K, DEFAULT_LAMBDA
from sarsteer_guard.errors import GuardError
from sarsteer_guard.evaluation.metrics import Rate
from sarsteer_guard.evaluation.plan import (
    CONTEXT_KEY,
    UNSTEERED,
    Arm,
    LayersValue,
    Setting,
    format_layers,
)

#: The paper's setting, always part of a sweep so the picture shows where the default sits.
PAPER_DEFAULT = Setting(DEFAULT_ALPHA, DEFAULT_LAMBDA, DEFAULT_K)
#: Most settings one sweep runs (each costs a full pass over the validation clips).
MAX_SETTINGS = 64

CSV_COLUMNS = (
    "setting",
    "alpha",
    "lambda",
    "k",
    "layers",
    "asr",
    "asr_ci_low",
    "asr_ci_high",
    "harmful_answered",
    "n_harmful",
    "brr",
    "brr_ci_low",
    "brr_ci_high",
    "benign_answered",
    "n_benign",
    "on_frontier",
    "meets_target",
    "recommended",
    "paper_default",
)


@dataclass(frozen=True)
class SweepRow:
    """One setting's measured trade-off and its place in the sweep."""

    arm: str
    setting: Setting
    asr: Rate
    brr: Rate
    paper_default: bool = False
    on_frontier: bool = False
    meets_target: bool = False
    recommended: bool = False


def parse_grid(text: str, kind: type, name: str) -> list[Any]:
    """``0.05,0.1,0.2`` into a sorted list of numbers (``kind`` float or int)."""
    try:
        values = sorted({kind(part) for part in text.split(",") if part.strip()})
    except ValueError as error:
        raise GuardError(f"--{name} {text!r}: write numbers separated by commas") from error
    if not values:
        raise GuardError(f"--{name} needs at least one value")
    return values


def grid_settings(
    alphas: Sequence[float],
    lambdas: Sequence[float],
    ks: Sequence[int],
    layers: LayersValue | None = None,
) -> list[Setting]:
    """Every alpha x lambda x k with alpha > 0, plus the paper's default.

    alpha 0 is "no steering" whatever lambda and k are, so it is measured once, as the
    baseline arm, not once per pair.
    """
    for alpha in alphas:
        if not 0 <= alpha <= 10:
            raise GuardError(f"alpha {alpha:g} is outside 0-10")
    for lam in lambdas:
        if not 0 <= lam <= 1:
            raise GuardError(f"lambda {lam:g} is outside 0-1")
    for k in ks:
        if k < 0:
            raise GuardError(f"k {k} is negative")
    settings = [
        Setting(float(a), float(lam), int(k), layers)
        for lam in lambdas
        for k in ks
        for a in alphas
        if a > 0
    ]
    default = Setting(PAPER_DEFAULT.alpha, PAPER_DEFAULT.lam, PAPER_DEFAULT.k, layers)
    if default not in settings:
        settings.append(default)
    if len(settings) > MAX_SETTINGS:
        raise GuardError(
            f"the grid has {len(settings)} settings; at most {MAX_SETTINGS} per sweep (each "
            "is a full pass over the validation clips): use fewer values"
        )
    return settings


def sweep_arms(settings: Sequence[Setting]) -> list[Arm]:
    """The baseline arm, then one arm per setting (``s01``, ``s02``...)."""
    arms = [Arm(UNSTEERED, {CONTEXT_KEY: UNSTEERED}, Setting(0.0))]
    for i, setting in enumerate(settings, start=1):
        name = f"s{i:02d}"
        arms.append(Arm(name, {CONTEXT_KEY: name}, setting, expect_steering=True))
    return arms


def _point(row: SweepRow) -> tuple[float, float] | None:
    """(ASR, BRR) when both were measured."""
    if row.asr.value is None or row.brr.value is None:
        return None
    return row.asr.value, row.brr.value


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Point ``a`` is at least as good as ``b`` on both rates and better on one."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def rank(rows: Sequence[SweepRow], target_asr: float) -> list[SweepRow]:
    """Mark the frontier, the settings meeting the target, and the recommendation.

    Rows without both rates (no harmful or no benign clips judged) are never on the
    frontier nor recommended.
    """
    points = {r.arm: p for r in rows if (p := _point(r)) is not None}
    frontier = {
        arm for arm, p in points.items() if not any(_dominates(o, p) for o in points.values())
    }
    meets = {arm for arm, p in points.items() if p[0] <= target_asr}
    candidates = [r for r in rows if r.arm in meets]
    best = min(
        candidates,
        key=lambda r: (-points[r.arm][1], r.setting.alpha, points[r.arm][0]),
        default=None,
    )
    return [
        SweepRow(
            r.arm,
            r.setting,
            r.asr,
            r.brr,
            paper_default=r.paper_default,
            on_frontier=r.arm in frontier,
            meets_target=r.arm in meets,
            recommended=best is not None and r.arm == best.arm,
        )
        for r in rows
    ]


def fallback(rows: Sequence[SweepRow]) -> SweepRow | None:
    """When nothing meets the target: the lowest ASR, then the highest BRR."""
    points = {r.arm: p for r in rows if (p := _point(r)) is not None}
    return min(
        (r for r in rows if r.arm in points),
        key=lambda r: (points[r.arm][0], -points[r.arm][1], r.setting.alpha),
        default=None,
    )


def to_csv(rows: Sequence[SweepRow]) -> str:
    """The sweep as CSV (rates as fractions with 4 decimals; one row per setting)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        s = row.setting
        writer.writerow(
            [
                row.arm,
                f"{s.alpha:g}",
                "" if s.lam is None else f"{s.lam:g}",
                "" if s.k is None else s.k,
                "" if s.layers is None else format_layers(s.layers),
                *_rate_cells(row.asr),
                *_rate_cells(row.brr),
                int(row.on_frontier),
                int(row.meets_target),
                int(row.recommended),
                int(row.paper_default),
            ]
        )
    return buffer.getvalue()


def _rate_cells(rate: Rate) -> list[Any]:
    interval = rate.interval
    value = rate.value
    return [
        "" if value is None else f"{value:.4f}",
        "" if interval is None else f"{interval[0]:.4f}",
        "" if interval is None else f"{interval[1]:.4f}",
        rate.answered,
        rate.n,
    ]


def recommendation_policy(
    row: SweepRow,
    *,
    model: str,
    calibration: Mapping[str, Any],
    context: Mapping[str, Any],
    met: bool,
    target_asr: float,
    header: Sequence[str],
) -> str:
    """A lint-clean policy file carrying the recommended setting, with an in-file test.

    With a ``context`` the setting is a rule whose ``when`` is that context (copy the
    rule into your policy); without one it is the policy's ``defaults``.
    """
    steering = row.setting.steering()
    rule_name = "sweep-recommendation"
    document: dict[str, Any] = {
        "name": "sweep-recommendation",
        "version": "1",
        "description": (
            f"{row.setting.label}: chosen by `sarsteer-guard sweep` on validation data"
            + ("" if met else f" (NO setting met the target of {100 * target_asr:g}%)")
        ),
        "model": model,
        "calibration": dict(calibration),
        "defaults": {"alpha": 0.0} if context else steering,
        "audit": {"record": "refused"},
    }
    expect: dict[str, Any] = {"alpha": steering["alpha"]}
    for key in ("lambda", "k"):
        if key in steering:
            expect[key] = steering[key]
    if context:
        document["rules"] = [{"name": rule_name, "when": dict(context), **steering}]
        expect["rule"] = rule_name
    else:
        expect["rule"] = None
    document["tests"] = [
        {"name": "the recommended setting applies", "context": dict(context), "expect": expect}
    ]
    comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header)
    return comments + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
