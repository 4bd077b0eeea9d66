"""What a steering-vector set depends on, as one torch-free value.

The identity of a vector set travels one way, and each step derives from the one before:

1. The policy turns its ``calibration`` section and a rule's k / lambda into a
   :class:`VectorRequest` (``PolicyDecision.vector_request``; no torch, no model).
2. The Guard's ``VectorProvider`` resolves it for one model, in one place: the
   ``CalibrationConfig`` that would compute the set and the store's ``VectorSetKey``
   (model fingerprint, calibration digest, refusal instruction and separator, k, lambda).
3. The set it loads or calibrates is a ``LoadedVectors``: the verified tensor, its readout
   layer and its store id, ``VectorSetKey.id``. That id is what ``TurnDecision.vector_set_id``
   and the audit record's ``vector_set_id`` carry, and what ``sarsteer-guard vectors list``
   shows.

Alpha is not part of any of them: policies that differ only in alpha share one set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sarsteer_guard.defaults import (
    DEFAULT_BENIGN,
    DEFAULT_HARMFUL,
    DEFAULT_K,
    DEFAULT_LAMBDA,
    DEFAULT_PROMPT,
    DEFAULT_REFUSAL_INSTRUCTION,
    DEFAULT_REFUSAL_SEPARATOR,
)

__all__ = ["VectorRequest"]


@dataclass(frozen=True, slots=True)
class VectorRequest:
    """Everything a vector set depends on besides the model (alpha is not here).

    Either a calibration (manifests, prompt, refusal instruction and separator, text mode)
    projected with ``k`` and ``lam``, or a stored set named by ``vector_set_id``, in which case
    the calibration fields are unused and ``k`` / ``lam`` are checked against the stored set.
    Hashable and cheap to compare: the Guard looks sets up by request on every turn.
    """

    k: int = DEFAULT_K
    lam: float = DEFAULT_LAMBDA
    harmful: Path = DEFAULT_HARMFUL
    benign: Path = DEFAULT_BENIGN
    refusal_instruction: str = DEFAULT_REFUSAL_INSTRUCTION
    refusal_separator: str = DEFAULT_REFUSAL_SEPARATOR
    prompt: str = DEFAULT_PROMPT
    text_only: bool = False
    vector_set_id: str | None = None

    @classmethod
    def stored(cls, vector_set_id: str, *, k: int, lam: float) -> VectorRequest:
        """A request for a stored set chosen by its id."""
        return cls(k=k, lam=lam, vector_set_id=vector_set_id)

    @property
    def is_stored(self) -> bool:
        """Whether a stored set is named instead of a calibration."""
        return self.vector_set_id is not None

    def as_spec(self) -> dict[str, Any]:
        """Plain keyword form (what ``PolicyDecision.vector_spec`` has always returned)."""
        spec: dict[str, Any] = {"k": self.k, "lam": self.lam}
        if self.vector_set_id is not None:
            spec["vector_set_id"] = self.vector_set_id
            return spec
        spec.update(
            harmful=self.harmful,
            benign=self.benign,
            refusal_instruction=self.refusal_instruction,
            refusal_separator=self.refusal_separator,
            prompt=self.prompt,
        )
        return spec
