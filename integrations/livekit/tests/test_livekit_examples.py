"""The shipped examples: the agent imports without running, the offline one works."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf
from livekit_harness import QUESTION, SECOND, Speech, silence
from sarsteer_guard.testing.scripted import ScriptedGuard

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agent_example_imports_without_connecting() -> None:
    module = load("livekit_agent")
    assert callable(module.entrypoint)
    assert callable(module.prewarm)


@pytest.mark.espeak
async def test_offline_example_prints_one_reply_per_utterance(
    speech: Speech,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wav = tmp_path / "question.wav"
    sf.write(wav, np.concatenate([speech(QUESTION), silence(1.0), speech(SECOND)]), 24000)
    built: list[ScriptedGuard] = []

    def fake_guard(**kwargs: object) -> ScriptedGuard:
        built.append(ScriptedGuard(reply=f"Reply for {kwargs['model']}.", delay_s=0.0))
        return built[-1]

    monkeypatch.setattr("sarsteer_guard.guard.core.Guard", fake_guard)
    module = load("livekit_offline")

    code = await module.main([str(wav), "--context", "channel=kids"])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out == [
        "turn 1 [answered, rule=None, alpha=0.1]: Reply for tiny.",
        "turn 2 [answered, rule=None, alpha=0.1]: Reply for tiny.",
    ]
    assert [dict(t.context) for t in built[0].turns] == [{"channel": "kids"}] * 2
    assert built[0].closed  # the example's model built the guard, so it closed it
