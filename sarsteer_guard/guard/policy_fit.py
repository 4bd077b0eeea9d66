"""Whether a policy can be put in force on the loaded model (at start and at every reload).

A policy names the model it was written for (``model:``, an id or a glob pattern) and the
layers it steers; both are facts of the loaded model. A policy that does not fit would
either steer a model its alpha and layers were never tuned for, or fail every turn it
matches, so it is a configuration error at start and a rejected edit at reload.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sarsteer_guard.errors import PolicyError

if TYPE_CHECKING:
    from sarsteer_guard.models.base import ModelFacts
    from sarsteer_guard.policy import Policy

__all__ = ["check_policy_fits", "model_names"]


def model_names(model_id: str) -> tuple[str, ...]:
    """Names a loaded model answers to: its id and, for a local directory, ``org/name``.

    ``/models/Qwen/Qwen2-Audio-7B-Instruct`` also answers to ``Qwen/Qwen2-Audio-7B-Instruct``
    so a policy written for the hub id matches a local copy laid out the same way.
    """
    parts = [p for p in model_id.replace("\\", "/").split("/") if p]
    tail = "/".join(parts[-2:])
    return (model_id,) if tail in ("", model_id) else (model_id, tail)


def check_policy_fits(policy: Policy, facts: ModelFacts) -> None:
    """Raise unless ``policy`` is meant for the loaded model and its layers exist there.

    Raises:
        PolicyError: the policy's ``model:`` does not match, or a rule names a layer (or
            a beta schedule) the model does not have; one line that says what to change.
    """
    names = model_names(facts.model_id)
    if not any(policy.applies_to(name) for name in names):
        raise PolicyError(
            f"policy {policy.ref} is for model {policy.model!r} but the loaded model is "
            f"{facts.model_id!r}: load the model the policy was written for, or set the "
            'policy\'s model: to a pattern that matches this one ("*" for any model)'
        )
    for decision in policy.possible_decisions():
        decision.resolve_layers(facts.num_layers)
        decision.resolve_beta(facts.num_layers)
