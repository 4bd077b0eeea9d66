"""What a policy decides for one turn, and the identity of the vectors it needs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sarsteer_guard.defaults import DEFAULT_PROMPT
from sarsteer_guard.policy.layers import BetaMap, LayerSelection
from sarsteer_guard.policy.sections import Audit, Calibration, FailureMode, Mode, SteerPositions
from sarsteer_guard.vector_request import VectorRequest

#: Spoken when a turn must be refused and the policy sets no message of its own
#: (fail_closed with vectors unavailable, or a refused turn with no fixed message).
DEFAULT_REFUSAL_MESSAGE = "Sorry, I can't help with that."

_KEY_DOMAIN = "sarsteer-guard/policy-vector-key/v1"
#: How the shipped calibration set appears in vector keys.
BUILTIN = "builtin"


def vector_source(calibration: Calibration, *, k: int, lam: float) -> dict[str, Any]:
    """What a vector set depends on, as the policy writes it: calibration, k, lambda.

    Alpha is deliberately absent, so policies that differ only in alpha share one set.
    Manifest paths are taken as written (machine-independent); the manifests'
    contents are covered by the calibration digest stored with each vector set.
    """
    source: dict[str, Any]
    if calibration.vector_set is not None:
        source = {"vector_set": calibration.vector_set}
    else:
        source = {
            "harmful": calibration.harmful or BUILTIN,
            "benign": calibration.benign or BUILTIN,
            "refusal_instruction": calibration.effective_refusal_instruction,
            "refusal_separator": calibration.effective_refusal_separator,
            "prompt": calibration.effective_prompt,
        }
    return {"calibration": source, "k": int(k), "lambda": float(lam)}


def vector_request(
    calibration: Calibration, manifests: tuple[Path, Path] | None, *, k: int, lam: float
) -> VectorRequest:
    """The typed request for the Guard: ``vector_source`` with the manifests resolved.

    Args:
        calibration: the policy's calibration section.
        manifests: harmful and benign manifest paths resolved against the policy file
            (None when the calibration names a stored vector set).
        k: benign principal directions projected out (the rule's or the defaults').
        lam: projection strength (the rule's or the defaults').
    """
    if calibration.vector_set is not None or manifests is None:
        return VectorRequest.stored(str(calibration.vector_set), k=int(k), lam=float(lam))
    harmful, benign = manifests
    return VectorRequest(
        k=int(k),
        lam=float(lam),
        harmful=harmful,
        benign=benign,
        refusal_instruction=str(calibration.effective_refusal_instruction),
        refusal_separator=str(calibration.effective_refusal_separator),
        prompt=str(calibration.effective_prompt),
    )


def vector_key(calibration: Calibration, *, k: int, lam: float) -> str:
    """Stable 32-hex-digit id of ``vector_source`` (sha256 of its canonical JSON)."""
    canonical = json.dumps(
        {"domain": _KEY_DOMAIN, **vector_source(calibration, k=k, lam=lam)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The steering and handling for one turn, ready for the Guard.

    Decisions are computed once per rule when the policy loads, so ``evaluate`` only
    walks the rule conditions; the same object is returned for every matching turn.
    """

    policy_name: str
    policy_version: str
    policy_hash: str
    rule: str | None  # None: no rule matched, the defaults apply
    rule_index: int | None
    mode: Mode
    alpha: float
    lam: float
    k: int
    layers: LayerSelection
    beta: BetaMap
    preset: str | None  # the preset that set alpha, if any
    steer_positions: SteerPositions
    refusal_message: str | None  # fixed message spoken instead of the model's refusal
    detector_keywords: tuple[str, ...]  # extra keywords, added to the built-in list
    audit: Audit
    failure_mode: FailureMode
    system_prompt: str | None
    calibration: Calibration
    manifests: tuple[Path, Path] | None  # harmful, benign resolved (None: stored vector set)
    vector_request: VectorRequest  # the vectors this decision needs (built once, with it)

    @property
    def steered(self) -> bool:
        """Whether steering is on for this turn (alpha above 0)."""
        return self.alpha > 0.0

    @property
    def shadow(self) -> bool:
        """Serve the unsteered answer and only record what enforcing would have done."""
        return self.mode == "shadow"

    @property
    def prompt_only(self) -> bool:
        """Steer only the prompt's last position, not the generated tokens."""
        return self.steer_positions == "prompt_only"

    @property
    def spoken_refusal(self) -> str:
        """What to say when the turn is refused by policy (fixed message or the default)."""
        return self.refusal_message or DEFAULT_REFUSAL_MESSAGE

    def resolve_layers(self, num_layers: int) -> list[int]:
        """Layer indices to steer on a model with ``num_layers`` decoder layers.

        Raises:
            PolicyError: The policy names a layer the model does not have.
        """
        return self.layers.resolve(num_layers)

    def resolve_beta(self, num_layers: int) -> list[float]:
        """``beta_l`` for every layer of the model (index = layer; 1.0 unless set).

        Raises:
            PolicyError: The policy sets beta on a layer the model does not have.
        """
        return self.beta.resolve(num_layers)

    @property
    def audit_record(self) -> str:
        """Which turns are recorded: ``refused``, ``all`` or ``none``."""
        return self.audit.record

    @property
    def turn_prompt(self) -> str:
        """Text prompt sent with the user's audio: the one the vectors were calibrated with."""
        return self.calibration.effective_prompt or DEFAULT_PROMPT

    @property
    def vector_spec(self) -> dict[str, Any]:
        """:attr:`vector_request` as plain keywords (resolved paths; no alpha)."""
        return self.vector_request.as_spec()

    def vector_source(self) -> dict[str, Any]:
        """What this decision's vectors depend on, as written (calibration, k, lambda)."""
        return vector_source(self.calibration, k=self.k, lam=self.lam)

    def vector_key(self) -> str:
        """Id shared by every decision needing the same vectors, whatever its alpha."""
        return vector_key(self.calibration, k=self.k, lam=self.lam)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``policy explain --json``, audit records)."""
        return {
            "policy": {
                "name": self.policy_name,
                "version": self.policy_version,
                "hash": self.policy_hash,
            },
            "rule": self.rule,
            "mode": self.mode,
            "steering": {
                "steered": self.steered,
                "alpha": self.alpha,
                "preset": self.preset,
                "lambda": self.lam,
                "k": self.k,
                "layers": self.layers.to_data(),
                "beta": self.beta.to_data(),
                "steer_positions": self.steer_positions,
            },
            "vector_key": self.vector_key(),
            "refusal": {
                "message": self.refusal_message,
                "detector_keywords": list(self.detector_keywords),
            },
            "audit": self.audit.model_dump(mode="json"),
            "failure_mode": self.failure_mode,
            "system_prompt": self.system_prompt,
        }
