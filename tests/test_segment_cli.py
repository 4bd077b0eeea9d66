"""``sarsteer-guard segment``: JSON turns on stdout, one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sarsteer_guard.cli import main
from sarsteer_guard.testing.speech import espeak_available, speech_with_pauses

pytestmark = [
    pytest.mark.espeak,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed"),
]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[float, float]]]:
    x, truth = speech_with_pauses(
        ["Turn off the hallway lights.", "What time is it in Tokyo?", "Thanks, that's all."],
        1.0,
        44100,
    )
    path = tmp_path_factory.mktemp("cli") / "three turns.mp3"
    sf.write(path, np.stack([x, x], axis=1), 44100)
    return path, truth


def test_segment_prints_json(
    recording: tuple[Path, list[tuple[float, float]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, truth = recording
    assert main(["segment", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["file"] == str(path)
    assert out["sample_rate"] == 44100
    assert out["duration_s"] == pytest.approx(truth[-1][1] + 1.0, abs=0.05)
    assert len(out["turns"]) == len(truth)
    for turn, (start, end) in zip(out["turns"], truth, strict=True):
        assert abs(turn["start"] - start) <= 0.3
        assert abs(turn["end"] - end) <= 0.3


def test_segment_options(
    recording: tuple[Path, list[tuple[float, float]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, truth = recording
    args = ["segment", str(path), "--padding-ms", "0", "--aggressiveness", "3"]
    assert main([*args, "--end-silence-ms", "300", "--min-speech-ms", "100"]) == 0
    turns = json.loads(capsys.readouterr().out)["turns"]
    assert all(abs(t["start"] - s) <= 0.06 for t, (s, _) in zip(turns, truth, strict=True))
    assert main(["segment", str(path), "--max-turn-s", "0.5"]) == 0
    cut = json.loads(capsys.readouterr().out)["turns"]
    assert len(cut) > len(truth)
    assert all(t["end"] - t["start"] <= 0.5 + 1e-6 for t in cut)


@pytest.mark.parametrize(
    ("setup", "args", "needle"),
    [
        (None, [], "not found"),
        ("text", [], "not a readable audio file"),
        (None, ["--aggressiveness", "9"], "aggressiveness must be 0-3"),
    ],
)
def test_segment_errors_are_one_line_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    setup: str | None,
    args: list[str],
    needle: str,
) -> None:
    path = tmp_path / "input.wav"
    if setup == "text":
        path.write_text("not audio at all\n")
    elif args:
        sf.write(path, np.zeros(16000, np.float32), 16000)
    assert main(["segment", str(path), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sarsteer-guard: error: ")
    assert needle in lines[0]
