"""What an evaluation runs: items, arms (steering settings) and the one policy that serves them.

Every arm of a run (no steering, the configuration under test, each sweep setting) goes
through ONE Guard on one model: an in-memory policy gets one rule per arm, selected by
the reserved context key :data:`CONTEXT_KEY`, so unsteered and steered turns of every
setting share the model and the engine (rows with the same vectors batch together, each
with its own alpha). Two Guards on one model would run two engine threads over the same
modules and mix their hooks.

Two ways to say what is under test:

- explicit numbers (``alpha``, ``lambda``, ``k``, ``layers``): :func:`explicit_policy`;
- a policy file and a turn context: :func:`policy_under_test` keeps the file's rules and
  calibration and prepends the no-steering rule. Evaluation needs the model's own words
  and no side effects, so the copy serves no fixed refusal message, enforces (no shadow),
  records nothing in the audit log and drops the file's in-file tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sarsteer_guard.errors import GuardError
from sarsteer_guard.evaluation.metrics import Kind
from sarsteer_guard.manifest import ManifestItem
from sarsteer_guard.policy import Policy, parse_policy

#: Context key that selects an arm's rule; reserved during evaluation.
CONTEXT_KEY = "eval_setting"
#: Arm names used by ``eval``.
UNSTEERED = "unsteered"
STEERED = "steered"

ContextValue = str | int | float | bool
LayersValue = str | list[int | str]


@dataclass(frozen=True)
class Setting:
    """A steering setting under test (None = taken from the calibration / policy defaults)."""

    alpha: float
    lam: float | None = None
    k: int | None = None
    layers: LayersValue | None = None

    @property
    def label(self) -> str:
        """Plain words for reports, e.g. ``alpha 0.1, lambda 1, k 10``."""
        if self.alpha == 0:
            return "no steering"
        parts = [f"alpha {self.alpha:g}"]
        if self.lam is not None:
            parts.append(f"lambda {self.lam:g}")
        if self.k is not None:
            parts.append(f"k {self.k}")
        if self.layers is not None and self.layers != "all":
            parts.append(f"layers {format_layers(self.layers)}")
        return ", ".join(parts)

    def steering(self) -> dict[str, Any]:
        """The policy keys this setting sets (``alpha``, ``lambda``, ``k``, ``layers``)."""
        out: dict[str, Any] = {"alpha": float(self.alpha)}
        if self.alpha > 0:
            if self.lam is not None:
                out["lambda"] = float(self.lam)
            if self.k is not None:
                out["k"] = int(self.k)
            if self.layers is not None:
                out["layers"] = self.layers
        return out


@dataclass(frozen=True)
class Arm:
    """One arm of a run: its name, the context its turns carry, what it should steer."""

    name: str
    context: Mapping[str, ContextValue]
    setting: Setting | None = None  # None: the policy under test decides
    expect_steering: bool = False  # alpha > 0 expected: vectors must be applied

    @property
    def label(self) -> str:
        """The setting's label, or "policy decision" when the policy decides."""
        return self.setting.label if self.setting is not None else "the policy's decision"


@dataclass(frozen=True)
class EvalItem:
    """A clip to evaluate: its manifest item, harmful or benign, and a run-unique key."""

    kind: Kind
    item: ManifestItem
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.kind}:{self.item.id}")

    @property
    def category(self) -> str:
        """The item's category ("uncategorised" when the data set gives none)."""
        return self.item.category or "uncategorised"

    @property
    def request(self) -> str | None:
        """What is asked: the clip's transcript, else its text prompt."""
        return self.item.transcript or self.item.text

    @property
    def prompt(self) -> str | None:
        """The item's own text prompt (AIR-Bench questions), if any."""
        return self.item.text


def parse_layers(text: str | None) -> LayersValue | None:
    """``all`` or ``10-20,24`` from the command line into the policy's ``layers`` value."""
    if text is None:
        return None
    text = text.strip()
    if text == "all":
        return "all"
    out: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        if part.isdigit():
            out.append(int(part))
        elif part:
            out.append(part)
    if not out:
        raise GuardError(f"--layers {text!r} names no layer; write all, 12 or 10-20,24")
    return out


def format_layers(layers: LayersValue) -> str:
    """The inverse of :func:`parse_layers`, for labels and CSV cells."""
    return layers if isinstance(layers, str) else ",".join(str(x) for x in layers)


def calibration_section(
    harmful: Path | None = None,
    benign: Path | None = None,
    *,
    base: Path | None = None,
) -> dict[str, Any]:
    """A policy ``calibration`` block: the shipped set, or two manifests.

    Paths are written absolute, or relative to ``base`` (the folder of the file the
    block is written into).
    """
    if (harmful is None) != (benign is None):
        raise GuardError(
            "give both calibration manifests (harmful and benign) or neither for the shipped set"
        )
    if harmful is None or benign is None:
        return {}
    return {"harmful": _relative(harmful, base), "benign": _relative(benign, base)}


def _relative(path: Path, base: Path | None) -> str:
    absolute = path.resolve()
    if base is None:
        return str(absolute)
    import os

    return Path(os.path.relpath(absolute, base.resolve())).as_posix()


def explicit_policy(
    arms: Sequence[Arm],
    *,
    calibration: Mapping[str, Any],
    source: str = "<evaluation>",
) -> Policy:
    """A policy with one rule per arm (selected by :data:`CONTEXT_KEY`) and alpha 0 default."""
    document = {
        "name": "evaluation",
        "version": "1",
        "model": "*",
        "calibration": dict(calibration),
        "defaults": {"alpha": 0.0},
        "failure_mode": "fail_closed",
        "audit": {"record": "none"},
        "rules": _arm_rules(arms),
    }
    return parse_policy(yaml.safe_dump(document, sort_keys=False), source=source)


def policy_under_test(policy: Policy, arms: Sequence[Arm]) -> Policy:
    """The user's policy for evaluation: arm rules first, then the file's own rules.

    Served as an evaluation copy: no fixed refusal message (the model's words are
    judged), enforce mode, no audit records, no in-file tests.
    """
    document = policy.model_dump(mode="json", by_alias=True, exclude_none=True)
    document["mode"] = "enforce"
    document["audit"] = {"record": "none"}
    document.pop("tests", None)
    refusal = dict(document.get("refusal") or {})
    refusal.pop("message", None)
    document["refusal"] = refusal
    rules = []
    for rule in document.get("rules", []):
        rule = {k: v for k, v in rule.items() if k not in ("mode", "refusal", "audit")}
        rules.append(rule)
    document["rules"] = _arm_rules(arms) + rules
    return parse_policy(yaml.safe_dump(document, sort_keys=False), source=policy.source)


def _arm_rules(arms: Sequence[Arm]) -> list[dict[str, Any]]:
    return [
        {"name": f"eval-{arm.name}", "when": {CONTEXT_KEY: arm.name}, **arm.setting.steering()}
        for arm in arms
        if arm.setting is not None
    ]


def check_context(context: Mapping[str, ContextValue]) -> None:
    """Refuse a user context that uses the reserved key."""
    if CONTEXT_KEY in context:
        raise GuardError(
            f"the context key {CONTEXT_KEY!r} is reserved by the evaluation; rename it"
        )
