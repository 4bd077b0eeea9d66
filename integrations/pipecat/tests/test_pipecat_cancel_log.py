"""A turn cancelled by barge-in leaves an info log line with its id (issue #10 item 6)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from loguru import logger
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test
from sarsteer_guard.testing.scripted import ScriptedGuard

from pipecat_sarsteer import SARSteerDecisionFrame, SARSteerGuardService


@pytest.fixture
def info_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO")
    yield lines
    logger.remove(sink)


async def test_barge_in_cancellation_is_logged_with_the_turn_id(
    speech: Callable[[str], np.ndarray],
    to_frames: Callable[..., list[InputAudioRawFrame]],
    pause: Callable[[float], np.ndarray],
    info_lines: list[str],
) -> None:
    guard = ScriptedGuard(reply="one two three four five six seven eight nine ten", delay_s=0.1)
    service = SARSteerGuardService(guard)
    frames: list[Frame] = [
        UserStartedSpeakingFrame(),
        *to_frames(speech("How do I bake bread at home?")),
        *to_frames(pause(0.3)),
        UserStoppedSpeakingFrame(),
        SleepFrame(sleep=0.35),
        InterruptionFrame(),
    ]
    down, _ = await run_test(service, frames_to_send=frames)

    assert not any(isinstance(f, SARSteerDecisionFrame) for f in down)
    [turn] = guard.turns
    assert guard.cancelled == [turn.turn_id]
    cancelled = [line for line in info_lines if f"turn {turn.turn_id} cancelled" in line]
    assert len(cancelled) == 1
    assert "| INFO" in cancelled[0]
