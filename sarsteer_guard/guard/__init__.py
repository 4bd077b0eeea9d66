"""The Guard core: speech turns in, guarded streamed responses out.

Building a guard for an adapter (``build_guard``, ``GuardHandle``) lives in
:mod:`sarsteer_guard.connect`, which sits above this package.
"""

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

__all__ = [
    "GuardEvent",
    "HistoryItem",
    "SpeechGuard",
    "TextDelta",
    "Timings",
    "Turn",
    "TurnDecision",
    "TurnError",
]
