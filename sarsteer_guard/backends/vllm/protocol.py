"""What one request tells the workers about its steering, and how the prefix cache is salted.

A request carries :class:`RowSteering` in ``SamplingParams.extra_args[EXTRA_KEY]`` as plain JSON
values. The vector set itself is uploaded to the workers once (by slot) and only referenced
here; the worker checks that the slot still holds the set the request names, so a stale slot
fails loudly instead of steering with the wrong vectors.

Steering semantics (the transformers hooks', position by position): a request's token at
sequence position ``p`` gets ``alpha * beta_l * v_l`` on every steered layer iff
``p >= prompt_len - 1`` (the last prompt token and every generated token), or only
``p == prompt_len - 1`` with ``prompt_only``. Position-based rather than "last token of the
step" so chunked prefill (only the chunk holding the last prompt token steers it) and
preemption (a recomputed request re-steers its generated tokens exactly as first computed)
stay correct.

No torch, no vLLM: the engine side and the worker side both import this.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["EXTRA_KEY", "RowSteering", "cache_salt"]

#: Key of this project's entry in ``SamplingParams.extra_args``.
EXTRA_KEY = "sarsteer"


@dataclass(frozen=True, slots=True)
class RowSteering:
    """Per-request steering, as the workers read it.

    Attributes:
        rid: the engine's own id for the request (results are keyed by it, whatever id vLLM
            uses internally).
        slot: table slot of the vector set, or None when the request references no set.
        set_id: id of the set expected in ``slot`` (checked by the worker).
        alpha: steering strength (0 = unsteered; the request is then bit-identical to one
            without a set).
        prompt_only: steer the last prompt token only.
        readout_layer: report the projection of this layer's state at the last prompt token
            onto ``unit(v_layer)`` (before this layer's own offset).
        capture: report the state of every layer at the last prompt token (calibration).
    """

    rid: str
    slot: int | None = None
    set_id: str | None = None
    alpha: float = 0.0
    prompt_only: bool = False
    readout_layer: int | None = None
    capture: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be finite, got {self.alpha!r}")
        if (self.slot is None) != (self.set_id is None):
            raise ValueError("slot and set_id go together: give both or neither")
        if self.slot is None and (self.alpha != 0.0 or self.readout_layer is not None):
            raise ValueError("a steered or read-out request needs a vector set (slot, set_id)")

    @property
    def steered(self) -> bool:
        """The request changes the residual stream (alpha is non-zero)."""
        return self.slot is not None and self.alpha != 0.0

    def to_extra(self) -> dict[str, object]:
        """The JSON-safe mapping stored under :data:`EXTRA_KEY`."""
        return {
            "rid": self.rid,
            "slot": self.slot,
            "set_id": self.set_id,
            "alpha": float(self.alpha),
            "prompt_only": bool(self.prompt_only),
            "readout_layer": self.readout_layer,
            "capture": bool(self.capture),
        }

    @classmethod
    def from_extra(cls, extra: Mapping[str, object] | None) -> RowSteering | None:
        """Parse ``SamplingParams.extra_args`` (None when the request carries no entry)."""
        if not extra or EXTRA_KEY not in extra:
            return None
        raw = extra[EXTRA_KEY]
        if not isinstance(raw, Mapping):
            raise ValueError(f"extra_args[{EXTRA_KEY!r}] must be a mapping")
        slot = raw.get("slot")
        readout = raw.get("readout_layer")
        set_id = raw.get("set_id")
        alpha = raw.get("alpha", 0.0)
        if not isinstance(alpha, int | float):
            raise ValueError(f"extra_args[{EXTRA_KEY!r}]['alpha'] must be a number")
        return cls(
            rid=str(raw.get("rid", "")),
            slot=None if slot is None else int(str(slot)),
            set_id=None if set_id is None else str(set_id),
            alpha=float(alpha),
            prompt_only=bool(raw.get("prompt_only", False)),
            readout_layer=None if readout is None else int(str(readout)),
            capture=bool(raw.get("capture", False)),
        )


def cache_salt(steering: RowSteering) -> str | None:
    """Prefix-cache salt: None for unsteered requests, else a digest of the steering.

    vLLM never serves the last prompt token from the cache, but the blocks that later hold it
    and the generated tokens carry steered key/values. Requests that would steer differently
    (another set, alpha or position rule) get another salt, so they never share such blocks;
    unsteered requests (alpha 0 included: their key/values are the unsteered ones) share one
    namespace. Readout and capture do not change key/values, so they do not salt.
    """
    if not steering.steered:
        return None
    payload = json.dumps(
        [steering.set_id, repr(float(steering.alpha)), steering.prompt_only],
        separators=(",", ":"),
    )
    return "sarsteer-" + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]
