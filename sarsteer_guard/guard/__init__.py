"""The Guard core: speech turns in, guarded streamed responses out."""

from sarsteer_guard.guard.events import (
    GuardEvent,
    HistoryItem,
    SpeechGuard,
    TextDelta,
    Timings,
    Turn,
    TurnDecision,
    TurnError,
)
from sarsteer_guard.guard.factory import build_guard

__all__ = [
    "GuardEvent",
    "HistoryItem",
    "SpeechGuard",
    "TextDelta",
    "Timings",
    "Turn",
    "TurnDecision",
    "TurnError",
    "build_guard",
]
