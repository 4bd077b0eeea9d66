"""The Guard behind LiveKit's ``RealtimeModel`` interface."""

from livekit.plugins.sarsteer.realtime.realtime_model import (
    DEFAULT_TURN_DETECTION,
    GuardTurnError,
    RealtimeModel,
    RealtimeSession,
)

__all__ = ["DEFAULT_TURN_DETECTION", "GuardTurnError", "RealtimeModel", "RealtimeSession"]
