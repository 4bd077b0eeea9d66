"""Pipecat integration for sarsteer-guard: a guarded audio-language model as one service.

Replace ``stt, llm`` in a bot's pipeline with :class:`SARSteerGuardService`; it takes
the user's speech, asks the SARSteer Guard, and streams the guarded answer as LLM text
frames for any TTS.
"""

from sarsteer_guard.audio.vad import SegmenterSettings

from pipecat_sarsteer.frames import SARSteerContextUpdateFrame, SARSteerDecisionFrame
from pipecat_sarsteer.service import SARSteerGuardService, SARSteerParams
from pipecat_sarsteer.turns import TurnSettings, TurnSource, TurnTaking

__version__ = "0.1.0"

__all__ = [
    "SARSteerContextUpdateFrame",
    "SARSteerDecisionFrame",
    "SARSteerGuardService",
    "SARSteerParams",
    "SegmenterSettings",
    "TurnSettings",
    "TurnSource",
    "TurnTaking",
    "__version__",
]
