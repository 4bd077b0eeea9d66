"""YAML steering policies: which turns are steered, how hard, and what is recorded.

A policy is one YAML file edited by trust-and-safety teams: defaults, ordered rules
over the turn's context (first match wins), refusal and audit settings, and in-file
tests. ``load_policy`` validates it all-or-nothing with ``file:line:column`` errors;
``Policy.evaluate(context)`` returns a frozen ``PolicyDecision`` for the Guard;
``PolicyWatcher`` hot-reloads it. See docs/policies.md for the format.

This package never imports torch: the CLI's ``policy`` commands and CI linting stay
fast and run where no model is installed.
"""

from pathlib import Path

from sarsteer_guard.policy.conditions import Condition, Context, parse_condition
from sarsteer_guard.policy.decision import DEFAULT_REFUSAL_MESSAGE, PolicyDecision
from sarsteer_guard.policy.layers import BetaMap, LayerSelection
from sarsteer_guard.policy.loader import (
    PolicyLoadError,
    load_policy,
    parse_policy,
    policy_from_bytes,
)
from sarsteer_guard.policy.model import Explanation, Policy, RuleCheck
from sarsteer_guard.policy.presets import PRESETS, Preset
from sarsteer_guard.policy.sections import (
    Audit,
    Calibration,
    Refusal,
    Rule,
    Steering,
)
from sarsteer_guard.policy.selftest import PolicyTestResult, run_policy_tests
from sarsteer_guard.policy.watcher import PolicyWatcher


def default_policy_path() -> Path:
    """The shipped default policy (``policies/default.yaml``, packaged copy first)."""
    packaged = Path(__file__).resolve().parent.parent / "data" / "policies" / "default.yaml"
    if packaged.exists():
        return packaged
    return Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


def policy_json_schema() -> dict[str, object]:
    """JSON Schema of the policy format, for editors' YAML plugins (``policy schema``)."""
    schema = Policy.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
    }


__all__ = [
    "DEFAULT_REFUSAL_MESSAGE",
    "PRESETS",
    "Audit",
    "BetaMap",
    "Calibration",
    "Condition",
    "Context",
    "Explanation",
    "LayerSelection",
    "Policy",
    "PolicyDecision",
    "PolicyLoadError",
    "PolicyTestResult",
    "PolicyWatcher",
    "Preset",
    "Refusal",
    "Rule",
    "RuleCheck",
    "Steering",
    "default_policy_path",
    "load_policy",
    "parse_condition",
    "parse_policy",
    "policy_from_bytes",
    "policy_json_schema",
    "run_policy_tests",
]
