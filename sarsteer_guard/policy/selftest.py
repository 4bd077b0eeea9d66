"""In-file policy tests: each ``tests:`` entry is a context and the decision it must get.

Editors change rules without reading code; these tests are how a change proves it
did what they meant, in CI (``sarsteer-guard policy test``) and before a hot reload
is trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sarsteer_guard.policy.conditions import show
from sarsteer_guard.policy.decision import PolicyDecision
from sarsteer_guard.policy.layers import LayerSelection
from sarsteer_guard.policy.model import Policy
from sarsteer_guard.policy.sections import Expectation


@dataclass(frozen=True, slots=True)
class PolicyTestResult:
    """The outcome of one in-file test."""

    index: int  # 0-based position in ``tests:``
    name: str  # the test's name, or "test N"
    passed: bool
    failures: tuple[str, ...]  # one sentence per expectation that did not hold
    decision: PolicyDecision


def _actual(decision: PolicyDecision, key: str) -> Any:
    if key == "rule":
        return decision.rule
    if key == "lam":
        return decision.lam
    if key == "steered":
        return decision.steered
    if key in ("record", "keep_audio", "retention_days"):
        return getattr(decision.audit, key)
    return getattr(decision, key)


def _equal(expected: Any, actual: Any) -> bool:
    if isinstance(expected, float) or isinstance(actual, float):
        if isinstance(expected, bool) or isinstance(actual, bool):
            return expected is actual
        if expected is None or actual is None:
            return expected is actual
        return math.isclose(float(expected), float(actual), rel_tol=1e-9, abs_tol=1e-12)
    return bool(expected == actual)


def _render(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, LayerSelection):
        return str(value)
    return show(value)


def check_expectation(expect: Expectation, decision: PolicyDecision) -> list[str]:
    """Sentences for each expectation ``decision`` does not meet (empty when it passes)."""
    failures = []
    for key in expect.model_fields_set:
        wanted = getattr(expect, key)
        got = _actual(decision, key)
        if not _equal(wanted, got):
            label = "lambda" if key == "lam" else key
            if key == "rule":
                failures.append(
                    f"expected rule {_render(wanted)}, got {_render(got)}"
                    + (" (no rule matched; defaults)" if got is None else "")
                )
            else:
                failures.append(f"expected {label} {_render(wanted)}, got {_render(got)}")
    return sorted(failures)


def run_policy_tests(policy: Policy) -> list[PolicyTestResult]:
    """Run every ``tests:`` entry of ``policy`` against its own rules."""
    results = []
    for i, test in enumerate(policy.tests):
        decision = policy.evaluate(test.context)
        failures = check_expectation(test.expect, decision)
        results.append(
            PolicyTestResult(
                index=i,
                name=test.name or f"test {i + 1}",
                passed=not failures,
                failures=tuple(failures),
                decision=decision,
            )
        )
    return results
