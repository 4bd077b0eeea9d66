"""Startup canary: prove that steering is applied in the mode the engine actually runs.

Compiled code can silently skip Python-level steering (vLLM's torch.compile ignored forward
hooks). So at start the engine runs one canary conversation three ways, all greedy:

1. without a vector set,
2. with a canary set at alpha 0 (must equal 1: exact zeros leave rows untouched),
3. with the same set at alpha 1 (must change the readout and the tokens).

The canary set is a fixed pseudo-random direction per layer scaled to the canary's own state
norm at that layer (captured through the engine, which also exercises the capture path), so
the push is large for any model. A failure raises :class:`SteeringUnavailableError`: the
engine is broken, which no policy fail mode may paper over.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import torch

from sarsteer_guard.models.base import Message

from .engine import SteeringSet, SteeringUnavailableError, VllmRow

if TYPE_CHECKING:
    from .engine import VllmEngine

__all__ = ["canary_conversation", "run_self_check"]

_CANARY_TOKENS = 6


def canary_conversation(sampling_rate: int) -> list[Message]:
    """One deterministic user turn: half a second of fixed noise and a short prompt."""
    rng = np.random.default_rng(20251017)
    audio = (0.1 * rng.standard_normal(sampling_rate // 2)).astype(np.float32)
    return [Message("user", "Describe this sound.", audio)]


async def run_self_check(engine: VllmEngine) -> None:
    """Raise :class:`SteeringUnavailableError` unless steering demonstrably applies."""
    facts = engine.facts
    conversation = canary_conversation(facts.sampling_rate)
    mode = "eager" if engine.config.enforce_eager else "compiled"
    states = (await engine.capture([conversation]))[0]  # [L, H]
    if not bool(torch.isfinite(states).all()) or float(states.abs().sum()) == 0.0:
        raise SteeringUnavailableError(
            f"self-check ({mode}): the capture of layer states came back empty; vLLM does not "
            "run the steered layers' code in this mode, refusing to serve unsteered traffic"
        )
    generator = torch.Generator().manual_seed(1234)
    direction = torch.randn(facts.num_layers, facts.hidden_size, generator=generator)
    direction = direction / direction.norm(dim=1, keepdim=True)
    vectors = direction * states.norm(dim=1, keepdim=True)
    digest = hashlib.sha256(vectors.numpy().tobytes()).hexdigest()
    canary = SteeringSet(vectors=vectors, digest=f"canary-{digest[:16]}")
    readout_layer = facts.num_layers - 1

    def row(alpha: float | None) -> VllmRow:
        if alpha is None:
            return VllmRow(conversation, _CANARY_TOKENS, tag="self-check")
        return VllmRow(
            conversation,
            _CANARY_TOKENS,
            steering=canary,
            alpha=alpha,
            readout_layer=readout_layer,
            tag="self-check",
        )

    plain = await engine.generate(row(None))
    zero = await engine.generate(row(0.0))
    steered = await engine.generate(row(1.0))
    if zero.token_ids != plain.token_ids:
        raise SteeringUnavailableError(
            f"self-check ({mode}): an alpha-0 row differs from an unsteered row; the steered "
            "layers are not exact no-ops, refusing to start"
        )
    same_readout = zero.readout is not None and steered.readout == zero.readout
    if steered.token_ids == plain.token_ids or (facts.num_layers > 1 and same_readout):
        raise SteeringUnavailableError(
            f"self-check ({mode}): steering did not change the canary's "
            f"{'tokens' if steered.token_ids == plain.token_ids else 'readout'}; vLLM is not "
            "applying steering in this mode, refusing to serve unsteered traffic"
        )
