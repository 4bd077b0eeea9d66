"""Whether a policy can be put in force on the loaded model (at start and at every reload).

A policy names the model it was written for (``model:``, an id or a glob pattern) and the
layers it steers; both are facts of the loaded model. A policy that does not fit would
either steer a model its alpha and layers were never tuned for, or fail every turn it
matches, so it is a configuration error at start and a rejected edit at reload.

A policy is also only ready once the vector sets it can ask for are: :func:`prewarm_policy`
fetches or calibrates them before the policy is put in force (split out of
:mod:`sarsteer_guard.guard.core`, which calls it at load and before every reload swap).
Invariant: fitting is checked before any vector set is asked for, and a store that cannot
be reached is never a fault of the policy (only a warning, even when strict).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sarsteer_guard.errors import PolicyError, StoreUnavailableError, one_line
from sarsteer_guard.log import get_logger

if TYPE_CHECKING:
    from sarsteer_guard.guard.vectors import VectorProvider
    from sarsteer_guard.models.base import ModelFacts
    from sarsteer_guard.policy import Policy

__all__ = ["check_policy_fits", "model_names", "prewarm_policy"]

log = get_logger(__name__)


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


def prewarm_policy(
    policy: Policy, facts: ModelFacts, vectors: VectorProvider, *, strict: bool = False
) -> None:
    """Check layers and fetch or calibrate every vector set a policy can ask for.

    A rule naming a layer the model does not have raises :class:`PolicyError` here, at
    start or reload, rather than failing every turn it matches. A vector set that
    cannot be had is a warning at start (the policy's failure mode applies per turn);
    with ``strict`` (a reload) it raises, unless the store is merely unreachable.
    """
    check_policy_fits(policy, facts)
    requests = [d.vector_request for d in policy.possible_decisions() if d.alpha > 0]
    for request in dict.fromkeys(requests):
        try:
            vectors.get(request)
        except StoreUnavailableError as error:  # an outage, not a fault of the policy
            log.warning("guard.vectors_unavailable_at_start", error=one_line(error))
        except Exception as error:
            if strict:
                raise
            log.warning("guard.vectors_unavailable_at_start", error=one_line(error))
