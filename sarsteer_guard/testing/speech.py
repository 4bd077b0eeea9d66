"""Real speech for tests: espeak-ng synthesis, re-exported from :mod:`sarsteer_guard.synth.espeak`.

The synthesis lives in the product (``sarsteer-guard synth`` and the organism's data use it);
tests keep importing it from here.
"""

from __future__ import annotations

from sarsteer_guard.synth.espeak import (
    SILENCE_LEVEL,
    espeak_available,
    speech_with_pauses,
    synthesize,
    trim_silence,
)

__all__ = ["SILENCE_LEVEL", "espeak_available", "speech_with_pauses", "synthesize", "trim_silence"]
