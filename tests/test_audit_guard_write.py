"""Issue #10 A end to end: a turn whose context holds a lone surrogate still reaches the log."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.audit import SqliteAuditLog
from sarsteer_guard.cli import main
from sarsteer_guard.guard.core import Guard
from sarsteer_guard.guard.events import Turn, TurnDecision
from sarsteer_guard.models import load_model
from sarsteer_guard.testing.speech import synthesize

POLICY = """
name: surrogate-test
version: "1"
model: "*"
calibration: {k: 10, lambda: 1.0}
defaults: {alpha: 0.1, layers: all}
audit: {record: all, keep_audio: false, retention_days: 30}
"""


def test_a_turn_with_a_lone_surrogate_in_its_context_is_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    audit = tmp_path / "audit.db"
    audio = float_to_pcm16(synthesize("How do I pick a lock?"))
    turn = Turn(audio=audio, sample_rate=16000, context={"x": "\ud800", "name": "a\udfffb"})
    # The default embedded vector store: the tiny model calibrates once per machine.
    guard = Guard(load_model("tiny"), policy, None, str(audit))

    async def go() -> TurnDecision:
        async with guard:
            events = [event async for event in guard.respond(turn)]
        final = events[-1]
        assert isinstance(final, TurnDecision)
        return final

    decision = asyncio.run(go())
    assert decision.audit_id is not None  # handed out before the write
    with SqliteAuditLog(audit, create=False) as log:
        record = log.get(decision.audit_id)
    assert record is not None
    assert record.context == {"x": "\ufffd", "name": "a\ufffdb"}
    assert "normalised" in record.flags
    assert main(["audit", "verify", "--audit", str(audit)]) == 0
    assert capsys.readouterr().out.startswith("chain intact: 1 records")
