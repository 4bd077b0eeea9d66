"""A turn's intake: the checks and lookups between receiving a turn and generating for it.

:func:`prepare_turn` runs the edge checks (:mod:`sarsteer_guard.guard.edge`), the policy
decision and the audio front end; :func:`attach_vectors` fetches the vector set a steered
decision needs. Split out of :mod:`sarsteer_guard.guard.core` so everything a turn can be
refused or flagged for before it reaches the model sits in one place.

Invariants:

- nothing here raises for a fault of the turn or of its vectors: a turn that cannot be
  prepared becomes its :class:`~sarsteer_guard.guard.events.TurnError` (counted in
  ``FAILURES`` by kind, and logged when the cause is not a :class:`GuardError`), a vector
  set that cannot be had becomes flags (``vectors_unavailable`` and the policy's failure
  mode, ``fail_closed`` or ``fail_open``), so the session goes on;
- the order is edge checks, policy decision, audio: the policy only ever sees a checked
  context, and a turn is refused for the first thing wrong with it;
- the Guard's alpha override replaces the decision's alpha before anything reads it, and
  a repaired context flags the turn ``normalised`` (the flag reaches the audit record).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING

from sarsteer_guard.errors import GuardError, one_line
from sarsteer_guard.guard import metrics
from sarsteer_guard.guard.edge import NORMALISED_FLAG, checked_turn
from sarsteer_guard.guard.events import Turn, TurnError
from sarsteer_guard.guard.turn import PreparedTurn, turn_audio
from sarsteer_guard.log import get_logger

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from sarsteer_guard.guard.vectors import VectorProvider
    from sarsteer_guard.policy import Policy

__all__ = ["attach_vectors", "prepare_turn"]

log = get_logger(__name__)


def prepare_turn(
    turn: Turn, policy: Policy, *, rate: int, max_s: float, alpha: float | None
) -> PreparedTurn | TurnError:
    """The policy's decision and the audio at the model's ``rate``, or the turn's error.

    Args:
        turn: what the caller sent.
        policy: the policy in force.
        rate: the model's sampling rate.
        max_s: the longest turn accepted, in seconds.
        alpha: the Guard's alpha override (None: the policy's).
    """
    submitted = time.perf_counter()
    try:
        turn, repaired = checked_turn(turn)  # ids valid, context storable
        decision = policy.evaluate(dict(turn.context))
        if alpha is not None:
            decision = dataclasses.replace(decision, alpha=alpha)
        audio = turn_audio(turn, rate, max_s=max_s)
    except GuardError as error:
        metrics.FAILURES.labels(kind=error.kind).inc()
        return TurnError(turn.turn_id, error.kind, one_line(error))
    except Exception as error:  # e.g. a context value of an unexpected type
        metrics.FAILURES.labels(kind="bad_request").inc()
        log.warning("guard.turn_rejected", turn_id=turn.turn_id, error=one_line(error))
        return TurnError(
            turn.turn_id,
            "bad_request",
            f"the turn could not be prepared ({type(error).__name__}: {one_line(error)}); "
            "check its audio format and context values",
        )
    flags = (NORMALISED_FLAG,) if repaired else ()
    return PreparedTurn(turn=turn, decision=decision, audio=audio, submitted=submitted, flags=flags)


async def attach_vectors(
    prepared: PreparedTurn, provider: VectorProvider, pool: Executor | None
) -> PreparedTurn:
    """The turn with its vector set, or flagged for its policy's failure mode.

    A set already in memory is used at once; otherwise it is fetched (or calibrated) on
    ``pool`` (None: the loop's default executor), so the event loop keeps serving.
    """
    request = prepared.decision.vector_request
    try:
        vectors = provider.cached(request)
        if vectors is None:
            loop = asyncio.get_running_loop()
            vectors = await loop.run_in_executor(pool, provider.get, request)
    except Exception as error:  # whatever the cause, the policy's failure mode decides
        kind = error.kind if isinstance(error, GuardError) else "vectors"
        metrics.FAILURES.labels(kind=kind).inc()
        log.warning("guard.vectors_unavailable", turn_id=prepared.turn_id, error=one_line(error))
        mode = "fail_closed" if prepared.decision.failure_mode == "fail_closed" else "fail_open"
        return prepared.with_flags("vectors_unavailable", mode)
    return dataclasses.replace(prepared, vectors=vectors)
