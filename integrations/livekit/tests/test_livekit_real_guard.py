"""The plugin with the real Guard (tiny model) inside a real AgentSession."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from livekit.plugins import sarsteer
from livekit_harness import QUESTION, Harness, HarnessFactory, Speech, eventually, silence
from sarsteer_guard.testing.audit import CapturingAuditLog

pytestmark = [pytest.mark.espeak, pytest.mark.slow]

POLICY = """\
name: livekit-test
version: "1"
model: "*"
calibration:
  k: 10
  lambda: 1.0
defaults:
  preset: balanced
audit:
  record: all
  keep_audio: false
rules:
  - name: kids
    when: {channel: kids}
    preset: strict
"""


def guard_class() -> Any:
    """The in-process Guard, as the plugin builds it (``sarsteer_guard.connect.build_guard``)."""
    return importlib.import_module("sarsteer_guard.guard.core").Guard


async def test_real_guard_answers_and_audits_a_turn(
    harness_factory: HarnessFactory, speech: Speech, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    audit = CapturingAuditLog()
    guard = guard_class()(model="tiny", policy=str(policy), audit=audit)
    model = sarsteer.RealtimeModel(guard, context={"channel": "kids"})
    try:
        await model.start()
        h: Harness = await harness_factory(model, turn_detection="manual")
        await h.mic.play(silence(0.5))
        await h.mic.play(speech(QUESTION))
        await h.mic.play(silence(0.5))
        h.session.commit_user_turn()

        await h.wait_replies(1, limit_s=60)
        await eventually(lambda: h.decisions)
        records = await audit.wait_for(1)
    finally:
        await guard.close()

    decision = h.decisions[0]
    assert decision.session_id == h.rt_session.session_id
    assert decision.rule == "kids"  # the plugin's turn context reached the policy
    assert decision.text  # the tiny model always says something
    assert h.tts.texts  # ... and the session's TTS spoke it
    assert h.errors == []
    assert len(records) == 1
    record = records[0]
    assert record.turn_id == decision.turn_id
    assert record.rule == "kids"
    assert decision.audit_id == record.id


async def test_model_builds_the_real_guard_itself() -> None:
    model = sarsteer.RealtimeModel(model="tiny")
    assert model.guard is None  # nothing loaded by the constructor
    guard = await model.start()
    assert model.guard is guard
    await model.aclose()
