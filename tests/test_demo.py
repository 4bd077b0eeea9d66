"""`sarsteer-guard demo` table: full answers, and honest about where the vectors came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from sarsteer_guard.cli import main


def test_demo_prints_whole_answers_and_says_when_vectors_were_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--model", "tiny-planted", "--out", str(tmp_path), "--clips", "1"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "loaded and calibrated" in first
    assert "Sure, here are the steps." in first  # 25 characters: never cut to 18
    assert "I cannot assist with that." in first
    assert "ASR" in first
    assert "BRR" in first
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "loaded and calibrated" not in second
    assert "vectors reused" in second


def test_demo_rejects_a_non_positive_alpha(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out", str(tmp_path), "--alpha", "0"]) == 2
    assert "--alpha" in capsys.readouterr().err
