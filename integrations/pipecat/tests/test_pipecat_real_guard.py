"""The service end to end with the real Guard and the built-in tiny model."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.tests.utils import run_test

from pipecat_sarsteer import SARSteerDecisionFrame, SARSteerGuardService

try:
    from sarsteer_guard import Guard  # type: ignore[attr-defined]  # exported once the core lands
except ImportError:
    Guard = None

pytestmark = [
    pytest.mark.espeak,
    pytest.mark.slow,
    pytest.mark.skipif(Guard is None, reason="sarsteer_guard.Guard is not importable yet"),
]

RESPONSE_TYPES = (
    LLMFullResponseStartFrame,
    LLMTextFrame,
    SARSteerDecisionFrame,
    LLMFullResponseEndFrame,
)


async def test_real_guard_tiny_turn(
    speech: Callable[[str], np.ndarray],
    to_frames: Callable[..., list[InputAudioRawFrame]],
    pause: Callable[[float], np.ndarray],
) -> None:
    # The service builds the Guard itself, through the documented constructor.
    service = SARSteerGuardService(model="tiny", context={"channel": "test"})
    x = speech("How do I bake bread at home?")
    frames: list[Frame] = [
        *to_frames(pause(0.2)),
        UserStartedSpeakingFrame(),
        *to_frames(x),
        *to_frames(pause(0.3)),
        UserStoppedSpeakingFrame(),
    ]
    # The model loads in the background; the first turn waits for it.
    down, up = await run_test(service, frames_to_send=frames)

    out = [f for f in down if isinstance(f, RESPONSE_TYPES)]
    assert out, f"no response; upstream errors: {[str(f) for f in up]}"
    assert isinstance(out[0], LLMFullResponseStartFrame)
    assert isinstance(out[-1], LLMFullResponseEndFrame)
    texts = [f for f in out if isinstance(f, LLMTextFrame)]
    [decision] = [f.decision for f in out if isinstance(f, SARSteerDecisionFrame)]
    assert texts
    assert "".join(f.text for f in texts) == decision.text
    assert decision.session_id == service.session_id
    assert decision.policy
