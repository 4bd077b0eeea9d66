"""The values a turn is made of on its way through the Guard, and the one decision builder.

A turn is *prepared* (policy decision, audio at the model's rate, the vector set it will be
steered with, flags gathered on the way), then either generated or answered with the fixed
refusal; both paths end in :func:`build_decision`, so every ``TurnDecision`` field is set in
one place.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sarsteer_guard.errors import AudioError, one_line
from sarsteer_guard.guard.backend import RowDone, RowFailed, RowHandle, RowRequest, SteeringSpec
from sarsteer_guard.guard.events import Timings, Turn, TurnDecision, TurnError
from sarsteer_guard.refusal import RefusalDetector

if TYPE_CHECKING:
    from sarsteer_guard.guard.gate import GateVerdict
    from sarsteer_guard.guard.vectors import LoadedVectors
    from sarsteer_guard.models.base import Message
    from sarsteer_guard.policy import PolicyDecision

__all__ = [
    "PreparedTurn",
    "build_decision",
    "row_error",
    "shadow_outcome",
    "steering_spec",
    "turn_audio",
    "turn_rows",
]


@dataclass(frozen=True, slots=True)
class PreparedTurn:
    """A turn ready to answer.

    Attributes:
        turn: what the caller sent.
        decision: the policy's decision for it (alpha overridden if the Guard says so).
        audio: float32 mono at the model's sampling rate.
        submitted: ``perf_counter()`` when the turn arrived (timings start here).
        vectors: the set it is steered with (None: unsteered, or vectors unavailable).
        flags: what happened on the way (``vectors_unavailable``, ``fail_open``, ...).
    """

    turn: Turn
    decision: PolicyDecision
    audio: np.ndarray
    submitted: float
    vectors: LoadedVectors | None = None
    flags: tuple[str, ...] = ()

    def with_flags(self, *flags: str) -> PreparedTurn:
        """A copy with ``flags`` appended."""
        return dataclasses.replace(self, flags=(*self.flags, *flags))

    @property
    def turn_id(self) -> str:
        """The turn's id."""
        return self.turn.turn_id


def turn_audio(turn: Turn, rate: int, *, max_s: float) -> np.ndarray:
    """The turn's audio as float32 mono at the model's ``rate`` (the audio front end).

    Raises:
        AudioError: undecodable, shorter than 0.1 s, or longer than ``max_s`` seconds.
    """
    from sarsteer_guard.audio import check_clip_length, pcm_to_float

    audio = pcm_to_float(
        turn.audio,
        sample_rate=turn.sample_rate,
        channels=turn.channels,
        target_rate=rate,
        dtype=turn.sample_format,
    )
    check_clip_length(audio.shape[0], rate)  # too short for the model: refused here
    seconds = audio.shape[0] / rate
    if seconds > max_s:
        raise AudioError(
            f"the turn is {seconds:.1f} s long but at most {max_s:.0f} s is "
            "accepted: segment the stream into shorter turns"
        )
    return audio


def steering_spec(
    decision: PolicyDecision, vectors: LoadedVectors | None, num_layers: int
) -> SteeringSpec:
    """How the policy steers a turn's rows on a model with ``num_layers`` layers."""
    if vectors is None:
        return SteeringSpec()
    return SteeringSpec(
        vectors=vectors,
        layer_ids=tuple(decision.resolve_layers(num_layers)),
        beta=tuple(decision.resolve_beta(num_layers)),
        prompt_only=decision.prompt_only,
    )


def turn_rows(
    prepared: PreparedTurn, conversation: list[Message], *, num_layers: int, budget: int
) -> tuple[RowRequest, RowRequest | None]:
    """The served row and, in shadow mode with vectors, the steered row it is compared with.

    In shadow mode the served row runs unsteered (alpha 0) and the shadow row carries the
    policy's alpha; a turn without vectors is never steered.
    """
    decision, tag = prepared.decision, prepared.turn_id
    spec = steering_spec(decision, prepared.vectors, num_layers)
    alpha = decision.alpha if prepared.vectors is not None else 0.0
    served = RowRequest(conversation, spec, 0.0 if decision.shadow else alpha, budget, tag=tag)
    if not (decision.shadow and alpha > 0):
        return served, None
    return served, RowRequest(conversation, spec, alpha, budget, tag=f"{tag}:shadow")


def build_decision(
    prepared: PreparedTurn,
    *,
    verdict: GateVerdict,
    model_text: str,
    steered: bool,
    row: RowDone | None = None,
    shadow: dict[str, object] | None = None,
) -> TurnDecision:
    """The turn's decision event (``audit_id`` is added when the record is queued).

    Args:
        prepared: the turn.
        verdict: what was served and whether it counts as a refusal.
        model_text: what the model said ("" when it was not asked).
        steered: whether the served row was steered.
        row: the served row's result (None: the fixed refusal, nothing generated).
        shadow: what enforcing would have done, in shadow mode.
    """
    decision = prepared.decision
    flags = (*prepared.flags, *(("refusal_message_served",) if verdict.replaced else ()))
    total_ms = round((time.perf_counter() - prepared.submitted) * 1000, 2)
    timings = Timings(total_ms=total_ms)
    if row is not None:
        timings = Timings(
            queue_ms=round(row.queue_ms, 2),
            prefill_ms=round(row.prefill_ms, 2),
            first_token_ms=round(row.first_token_ms, 2),
            total_ms=total_ms,
        )
    return TurnDecision(
        turn_id=prepared.turn_id,
        session_id=prepared.turn.session_id,
        refused=verdict.refused,
        text=verdict.served,
        model_text=model_text,
        policy=decision.policy_name,
        policy_version=decision.policy_version,
        policy_hash=decision.policy_hash,
        rule=decision.rule,
        mode=decision.mode,
        alpha=decision.alpha,
        steered=steered,
        refusal_keyword=verdict.keyword,
        refusal_score=None if row is None else row.readout,
        vector_set_id=None if prepared.vectors is None else prepared.vectors.id,
        tokens=0 if row is None else row.tokens,
        flags=flags,
        shadow=shadow,
        timings=timings,
    )


def row_error(turn_id: str, failure: RowFailed) -> TurnError:
    """The turn's error when its row failed (the session goes on)."""
    error = failure.error
    return TurnError(
        turn_id,
        failure.kind,
        f"the model failed on this turn ({type(error).__name__}: {one_line(error)}); "
        "the session can continue",
    )


async def shadow_outcome(
    row: RowHandle | None, alpha: float, detector: RefusalDetector
) -> dict[str, object]:
    """What the steered shadow row did (or why there was none), for the decision and audit."""
    if row is None:
        return {"steered": False, "reason": "alpha is 0 or vectors unavailable"}
    result: RowDone | None = None
    async for event in row.events():
        if isinstance(event, RowDone):
            result = event
        elif isinstance(event, RowFailed):
            return {"steered": True, "error": str(event.error)}
    if result is None:  # pragma: no cover - a backend always ends a row
        return {"steered": True, "error": "no result"}
    verdict = detector(result.text)
    return {
        "steered": True,
        "alpha": alpha,
        "refused": verdict.refused,
        "refusal_keyword": verdict.keyword,
        "refusal_score": result.readout,
        "text": result.text,
    }
