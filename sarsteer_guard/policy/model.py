"""The policy: settings, ordered rules (first match wins) and in-file tests."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from sarsteer_guard.defaults import DEFAULT_BENIGN, DEFAULT_HARMFUL, DEFAULT_K, DEFAULT_LAMBDA
from sarsteer_guard.policy.conditions import Context, LocatedValueError
from sarsteer_guard.policy.decision import PolicyDecision, vector_key, vector_request
from sarsteer_guard.policy.layers import BetaMap, LayerSelection
from sarsteer_guard.policy.presets import DEFAULT_PRESET, PRESETS
from sarsteer_guard.policy.sections import (
    Alpha,
    Audit,
    Calibration,
    FailureMode,
    Mode,
    Name,
    PolicyTest,
    Refusal,
    Rule,
    Section,
    Steering,
    SteerPositions,
    Text,
    Version,
)


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """Whether one rule matched a context, and the plain-language reason."""

    rule: str
    matched: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """A decision with the reasons: rules checked in order up to the one that matched."""

    decision: PolicyDecision
    checks: tuple[RuleCheck, ...]

    @property
    def reason(self) -> str:
        """Why the decision's rule (or the defaults) applies."""
        if self.decision.rule is None:
            return (
                "no rule matched, so the defaults apply"
                if self.checks
                else ("the policy has no rules, so the defaults apply")
            )
        return self.checks[-1].reason

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``policy explain --json``."""
        return {
            **self.decision.to_dict(),
            "why": self.reason,
            "checked": [
                {"rule": c.rule, "matched": c.matched, "reason": c.reason} for c in self.checks
            ],
        }


class Policy(Section):
    """A steering policy, loaded from one YAML file; immutable once loaded.

    Use ``load_policy``/``parse_policy`` to build one from YAML: they add the content
    hash and the source, and turn every problem into a ``PolicyError`` with
    ``file:line:column``.
    """

    name: Name = Field(description="Policy name; recorded with every decision.")
    version: Version = Field(description="Your version label; recorded with every decision.")
    description: str | None = Field(None, description="A note for editors; not used.")
    model: Text = Field(
        description="Model this policy is meant for: a hub id or a pattern like Qwen/Qwen2-Audio-*."
    )
    calibration: Calibration
    max_alpha: Alpha | None = Field(
        None,
        description="Highest alpha this policy means to use. Alphas above the strict preset "
        "(0.2) are linted as warnings unless this is raised to cover them, so a typo such as "
        "4 for 0.4 cannot pass `policy lint --strict`.",
    )
    defaults: Steering = Field(default_factory=Steering)
    steer_positions: SteerPositions = Field(
        "last_and_generated",
        description="last_and_generated (the paper: last prompt position and every generated "
        "token) or prompt_only.",
    )
    mode: Mode = Field(
        "enforce",
        description="enforce, or shadow: serve the unsteered answer and record what the guard "
        "would have done.",
    )
    failure_mode: FailureMode = Field(
        "fail_closed",
        description="When vectors are unavailable: fail_closed speaks the refusal message; "
        "fail_open answers unsteered and flags the turn.",
    )
    system_prompt: Text | None = None
    refusal: Refusal = Field(default_factory=Refusal)
    audit: Audit = Field(default_factory=Audit)
    rules: tuple[Rule, ...] = Field((), description="Checked in order; the first match wins.")
    tests: tuple[PolicyTest, ...] = Field(
        (), description="Contexts and the decisions they should get; run by `policy test`."
    )

    _content_hash: str = PrivateAttr("")
    _source: str = PrivateAttr("<policy>")
    _decisions: tuple[PolicyDecision, ...] | None = PrivateAttr(None)
    _warnings: tuple[str, ...] = PrivateAttr(())
    _manifests: tuple[Path, Path] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _cross_checks(self) -> Policy:
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.name in seen:
                raise LocatedValueError(
                    f"two rules are named '{rule.name}' (rules {seen[rule.name] + 1} and {i + 1}); "
                    "rule names must be unique",
                    ("rules", i, "name"),
                )
            seen[rule.name] = i
        for field, label in (("k", "k"), ("lam", "lambda")):
            in_cal = getattr(self.calibration, field)
            in_def = getattr(self.defaults, field)
            if in_cal is not None and in_def is not None and in_cal != in_def:
                raise LocatedValueError(
                    f"{label} is {in_cal} under calibration but {in_def} under defaults; "
                    "set it in one place",
                    ("defaults", label),
                )
        for i, test in enumerate(self.tests):
            expected = test.expect.rule
            if expected is not None and expected not in seen:
                raise LocatedValueError(
                    f"test {i + 1} expects rule '{expected}', but no rule has that name",
                    ("tests", i, "expect", "rule"),
                )
        return self

    # ------------------------------------------------------------------ identity

    @property
    def content_hash(self) -> str:
        """sha256 of the file's bytes (of canonical JSON when built without a file)."""
        if not self._content_hash:
            canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
            self._content_hash = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        return self._content_hash

    @property
    def source(self) -> str:
        """The file this policy was read from (or the ``source`` given to ``parse_policy``)."""
        return self._source

    @property
    def warnings(self) -> tuple[str, ...]:
        """Advice found while loading (``file:line:column: warning``); never blocks loading."""
        return self._warnings

    @property
    def ref(self) -> str:
        """``name@version``, as audit records refer to policies."""
        return f"{self.name}@{self.version}"

    def applies_to(self, model_id: str) -> bool:
        """Whether ``model_id`` matches the policy's ``model`` (exact id or glob pattern)."""
        return fnmatch.fnmatchcase(model_id, self.model)

    def manifest_paths(self) -> tuple[Path, Path] | None:
        """Harmful and benign manifests, resolved against the policy file's folder.

        The shipped set when none are named; None for a stored vector set.
        """
        cal = self.calibration
        if cal.vector_set is not None:
            return None
        if cal.harmful is None or cal.benign is None:
            return DEFAULT_HARMFUL, DEFAULT_BENIGN
        base = Path(self._source).parent if not self._source.startswith("<") else Path.cwd()
        return base / cal.harmful, base / cal.benign

    def possible_decisions(self) -> tuple[PolicyDecision, ...]:
        """Every decision this policy can make (defaults first), e.g. to prefetch vectors."""
        return self.decisions

    def vector_key(self) -> str:
        """Vector-set id for the defaults (rules changing k or lambda have their own)."""
        default = self.decisions[0]
        return vector_key(self.calibration, k=default.k, lam=default.lam)

    # ------------------------------------------------------------------ decisions

    @property
    def decisions(self) -> tuple[PolicyDecision, ...]:
        """Precomputed decisions: index 0 the defaults, then one per rule, in order."""
        if self._decisions is None:
            self._decisions = self._build_decisions()
        return self._decisions

    def _build_decisions(self) -> tuple[PolicyDecision, ...]:
        base_k = self.calibration.k if self.calibration.k is not None else DEFAULT_K
        base_lam = self.calibration.lam if self.calibration.lam is not None else DEFAULT_LAMBDA
        start: dict[str, Any] = {
            "alpha": PRESETS[DEFAULT_PRESET].alpha,
            "preset": DEFAULT_PRESET,
            "lam": base_lam,
            "k": base_k,
            "layers": LayerSelection(None),
            "beta": BetaMap(),
        }
        self._manifests = self.manifest_paths()
        defaults = _apply_steering(start, self.defaults)
        out = [self._decision(defaults, None, None)]
        for i, rule in enumerate(self.rules):
            out.append(self._decision(_apply_steering(defaults, rule), rule, i))
        return tuple(out)

    def _decision(
        self, steering: dict[str, Any], rule: Rule | None, index: int | None
    ) -> PolicyDecision:
        audit = self.audit
        if rule is not None and rule.audit is not None:
            audit = audit.model_copy(update=rule.audit.model_dump(exclude_none=True))
        message = self.refusal.message
        if rule is not None and rule.refusal is not None and rule.refusal.message is not None:
            message = rule.refusal.message
        keywords = self.refusal.detector_keywords
        if message is not None and message not in keywords:
            # The fixed message is itself a refusal: spot it if a model ever says it.
            keywords = (*keywords, message)
        return PolicyDecision(
            policy_name=self.name,
            policy_version=self.version,
            policy_hash=self.content_hash,
            rule=rule.name if rule is not None else None,
            rule_index=index,
            mode=(rule.mode if rule is not None and rule.mode else None) or self.mode,
            alpha=float(steering["alpha"]),
            lam=float(steering["lam"]),
            k=int(steering["k"]),
            layers=steering["layers"],
            beta=steering["beta"],
            preset=steering["preset"],
            steer_positions=(
                rule.steer_positions if rule is not None and rule.steer_positions else None
            )
            or self.steer_positions,
            refusal_message=message,
            detector_keywords=keywords,
            audit=audit,
            failure_mode=self.failure_mode,
            system_prompt=(rule.system_prompt if rule is not None else None) or self.system_prompt,
            calibration=self.calibration,
            manifests=self._manifests,
            vector_request=vector_request(
                self.calibration, self._manifests, k=int(steering["k"]), lam=float(steering["lam"])
            ),
        )

    def evaluate(self, context: Context) -> PolicyDecision:
        """The decision for a turn: the first rule whose ``when`` holds, else the defaults.

        Args:
            context: What the application knows about the turn (channel, user_tier, ...);
                values are text, numbers or booleans; None counts as not set.
        """
        decisions = self.decisions
        for i, rule in enumerate(self.rules):
            if rule.when.matches(context):
                return decisions[i + 1]
        return decisions[0]

    def explain(self, context: Context) -> Explanation:
        """Like ``evaluate``, with the reason each rule up to the match did or did not hold."""
        checks = []
        for i, rule in enumerate(self.rules):
            matched, reason = rule.when.explain(context)
            checks.append(RuleCheck(rule.name, matched, reason))
            if matched:
                return Explanation(self.decisions[i + 1], tuple(checks))
        return Explanation(self.decisions[0], tuple(checks))


def _apply_steering(current: dict[str, Any], layer: Steering) -> dict[str, Any]:
    """Layer a defaults block or a rule over ``current``: its preset, then its numbers."""
    out = dict(current)
    if layer.preset is not None:
        out["alpha"] = PRESETS[layer.preset].alpha
        out["preset"] = layer.preset
    if layer.alpha is not None:
        out["alpha"] = layer.alpha
        out["preset"] = None
    for field in ("lam", "k", "layers", "beta"):
        value = getattr(layer, field)
        if value is not None:
            out[field] = value
    return out
