"""The offline examples run end to end in a real process, as a builder would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "sarsteer_guard" / "data" / "calibration" / "audio" / "harmful_004.flac"


@pytest.mark.parametrize("example", ["pipecat_offline.py", "livekit_offline.py"])
def test_offline_example_speaks_the_steered_refusal(example: str, tmp_path: Path) -> None:
    env = {**os.environ, "SARSTEER_STORE_URL": str(tmp_path / "vectors")}
    env["SARSTEER_AUDIT_URL"] = f"sqlite:///{tmp_path / 'audit.db'}"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example), "--model", "tiny-planted", str(CLIP)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "I cannot assist with that." in proc.stdout
    assert "Traceback" not in proc.stderr


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
