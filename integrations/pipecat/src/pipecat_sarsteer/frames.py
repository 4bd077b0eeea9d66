"""Frames the guard node adds to Pipecat's vocabulary.

Refusals must be visible to the rest of the pipeline (loggers, RTVI, an app's own
processors), and policy context (user tier, locale, channel) changes mid-call, so
both travel as frames like everything else in Pipecat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipecat.frames.frames import DataFrame, SystemFrame
from sarsteer_guard.guard.events import ContextValue, TurnDecision


@dataclass
class SARSteerDecisionFrame(DataFrame):
    """The Guard's verdict on one turn, pushed downstream before the response ends.

    A data frame so it stays in order with the response's text frames (and is
    dropped with them on an interruption); the ``on_decision`` event handler sees
    every decision regardless.

    Parameters:
        decision: What was served and why (refused, policy, rule, audit id, timings).
    """

    decision: TurnDecision

    @property
    def refused(self) -> bool:
        """Whether the listener got the refusal message."""
        return self.decision.refused

    def __str__(self) -> str:
        d = self.decision
        return f"{self.name}(turn: {d.turn_id}, refused: {d.refused}, rule: {d.rule})"


@dataclass
class SARSteerContextUpdateFrame(SystemFrame):
    """Change the policy context (and optionally the session id) for later turns.

    A system frame so it takes effect at once and survives interruptions: a turn
    that ends right after the update is judged under the new context.

    Parameters:
        context: Keys to set; merged into the current context unless ``replace``.
        replace: Replace the whole context instead of merging.
        session_id: New session id, or None to keep the current one.
    """

    context: Mapping[str, ContextValue] = field(default_factory=dict)
    replace: bool = False
    session_id: str | None = None
