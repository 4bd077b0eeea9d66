"""The offline examples run end to end in a real process, as a builder would run them."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sarsteer_guard.testing.scripted import ScriptedGuard

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "sarsteer_guard" / "data" / "calibration" / "audio" / "harmful_004.flac"

# The kids channel's age rules on any model (the shipped file names Qwen2-Audio).
KIDS_POLICY = """\
name: kids-test
version: "1"
model: "*"
calibration: {k: 10, lambda: 1.0}
defaults: {preset: balanced}
failure_mode: fail_closed
refusal: {message: "Sorry, I can't help with that."}
rules:
  - name: kids-under-13
    when: {channel: kids, age: {lt: 13}}
    alpha: 0.3
    refusal: {message: "Let's talk about something else!"}
  - name: kids-channel-adults
    when: {channel: kids}
    alpha: 0.1
"""


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One vector store for the module: tiny-planted is calibrated once, not per run."""
    tmp = tmp_path_factory.mktemp("examples")
    env = {**os.environ, "SARSTEER_STORE_URL": str(tmp / "vectors")}
    env["SARSTEER_AUDIT_URL"] = f"sqlite:///{tmp / 'audit.db'}"
    return env


def run_example(example: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / example), "--model", "tiny-planted", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("example", ["pipecat_offline.py", "livekit_offline.py"])
def test_offline_example_speaks_the_steered_refusal(
    example: str, example_env: dict[str, str]
) -> None:
    proc = run_example(example, example_env, str(CLIP))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "I cannot assist with that." in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("example", ["pipecat_offline.py", "livekit_offline.py"])
def test_offline_example_treats_age_9_as_a_child(
    example: str, example_env: dict[str, str], tmp_path: Path
) -> None:
    """``age=9`` is the number 9, so the kids policy's under-13 rule applies (item 24)."""
    policy = tmp_path / "kids.yaml"
    policy.write_text(KIDS_POLICY, encoding="utf-8")
    args = ["--policy", str(policy), "--context", "channel=kids", "--context", "age=9"]
    proc = run_example(example, example_env, *args, str(CLIP))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rule=kids-under-13" in proc.stdout
    assert "Let's talk about something else!" in proc.stdout
    assert "kids-channel-adults" not in proc.stdout


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_livekit_example_drives_a_real_agent_session(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reply comes through AgentSession's conversation, not from the plugin directly."""
    module = load_example("livekit_offline.py")
    guards: list[ScriptedGuard] = []
    sessions: list[Any] = []

    def fake_guard(**kwargs: object) -> ScriptedGuard:
        guards.append(ScriptedGuard(reply="Here is a reply.", delay_s=0.0))
        return guards[-1]

    class SpySession(module.AgentSession):  # type: ignore[name-defined,misc]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.items: list[Any] = []
            self.on("conversation_item_added", lambda ev: self.items.append(ev.item))
            sessions.append(self)

    monkeypatch.setattr("sarsteer_guard.guard.core.Guard", fake_guard)
    monkeypatch.setattr(module, "AgentSession", SpySession)

    code = await module.main([str(CLIP), "-c", "channel=kids", "-c", "age=9", "-c", "vip=true"])

    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        "turn 1 [answered, rule=None, alpha=0.1]: Here is a reply."
    ]
    (session,) = sessions
    messages = [i for i in session.items if i.type == "message"]
    assert [(m.role, m.text_content) for m in messages] == [("assistant", "Here is a reply.")]
    (turn,) = guards[0].turns
    assert dict(turn.context) == {"channel": "kids", "age": 9, "vip": True}
    assert guards[0].closed


def test_pipecat_bot_explains_missing_configuration() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARTESIA", "SARSTEER"))}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pipecat_bot.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert "CARTESIA_API_KEY" in proc.stdout + proc.stderr
