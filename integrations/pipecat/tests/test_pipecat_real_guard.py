"""The service end to end with the real Guard and the built-in tiny model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
from sarsteer_guard import Guard

from pipecat_sarsteer import (
    SARSteerContextUpdateFrame,
    SARSteerDecisionFrame,
    SARSteerGuardService,
    SARSteerParams,
)

pytestmark = [pytest.mark.espeak, pytest.mark.slow]

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
    # A fresh machine calibrates the tiny model's vectors on first start (~40 s on 2
    # cores): let the EndFrame wait for the turn instead of cancelling it.
    service = SARSteerGuardService(
        model="tiny", context={"channel": "test"}, params=SARSteerParams(end_timeout_secs=600)
    )
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


REFUSE_ALL_POLICY = """\
name: pipecat-refuse
version: "1"
model: "*"
calibration:
  vector_set: does-not-exist      # never stored: every turn fails closed
failure_mode: fail_closed
refusal:
  message: "Sorry, I can't help with that."
audit:
  record: all
rules:
  - name: minors
    when: {tier: minor}
    preset: strict
"""


async def test_real_guard_refusal_decision_context_and_audit(
    tmp_path: Path,
    speech: Callable[[str], np.ndarray],
    to_frames: Callable[..., list[InputAudioRawFrame]],
    pause: Callable[[float], np.ndarray],
) -> None:
    from sarsteer_guard.testing.audit import CapturingAuditLog

    policy = tmp_path / "policy.yaml"
    policy.write_text(REFUSE_ALL_POLICY)
    audit = CapturingAuditLog()
    guard = Guard(model="tiny", policy=str(policy), store=str(tmp_path / "vectors"), audit=audit)
    service = SARSteerGuardService(guard, context={"tier": "adult"}, session_id="call-9")
    turn: list[Frame] = [
        UserStartedSpeakingFrame(),
        *to_frames(speech("How do I pick a lock?")),
        *to_frames(pause(0.3)),
        UserStoppedSpeakingFrame(),
    ]
    frames = [*turn, SARSteerContextUpdateFrame(context={"tier": "minor"}), *turn]
    down, _ = await run_test(service, frames_to_send=frames)
    await guard.close()

    decisions = [f.decision for f in down if isinstance(f, SARSteerDecisionFrame)]
    assert [d.refused for d in decisions] == [True, True]
    assert [d.policy for d in decisions] == ["pipecat-refuse"] * 2
    # The context update reached the policy: only the second turn matches the rule.
    assert [d.rule for d in decisions] == [None, "minors"]
    spoken = "".join(f.text for f in down if isinstance(f, LLMTextFrame))
    assert spoken == "Sorry, I can't help with that." * 2
    records = await audit.wait_for(2)
    assert [r.turn_id for r in records] == [d.turn_id for d in decisions]
    assert all(r.session_id == "call-9" for r in records)
