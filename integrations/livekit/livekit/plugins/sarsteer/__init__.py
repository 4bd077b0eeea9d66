"""SARSteer plugin for LiveKit Agents.

A refusal-steered audio-language model (sarsteer-guard) as a ``RealtimeModel``: it
hears the user's speech directly and streams guarded text replies that the
``AgentSession``'s TTS speaks. Replace ``stt=..., llm=...`` with
``llm=sarsteer.RealtimeModel(...)``.
"""

from livekit.agents import Plugin
from sarsteer_guard.audio.vad import SegmenterSettings

from livekit.plugins.sarsteer import realtime
from livekit.plugins.sarsteer.log import logger
from livekit.plugins.sarsteer.realtime import (
    DEFAULT_TURN_DETECTION,
    GuardTurnError,
    RealtimeModel,
    RealtimeSession,
)
from livekit.plugins.sarsteer.version import __version__

__all__ = [
    "DEFAULT_TURN_DETECTION",
    "GuardTurnError",
    "RealtimeModel",
    "RealtimeSession",
    "SegmenterSettings",
    "__version__",
    "realtime",
]


class SarsteerPlugin(Plugin):
    """Registers the plugin with LiveKit Agents (shown in worker logs, version checks)."""

    def __init__(self) -> None:
        super().__init__(__name__, __version__, __package__ or __name__, logger)


Plugin.register_plugin(SarsteerPlugin())
