"""The shipped speech test kit: espeak-ng synthesis and ground-truth boundaries."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sarsteer_guard.errors import AudioError
from sarsteer_guard.testing import speech
from sarsteer_guard.testing.speech import espeak_available, speech_with_pauses, synthesize

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")


@needs_espeak
@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_synthesize_rate_and_voices(rate: int) -> None:
    us = synthesize("Good morning, how can I help?", rate=rate)
    gb = synthesize("Good morning, how can I help?", rate=rate, voice="en-gb", speed=200)
    assert us.dtype == np.float32
    assert 1.0 < us.size / rate < 4.0
    assert gb.size < us.size  # faster speech is shorter
    assert 0.1 < np.abs(us).max() <= 1.0


@needs_espeak
def test_speech_with_pauses_boundaries_are_true_extents() -> None:
    texts = ["Hello there.", "Turn the music down.", "Thanks."]
    x, bounds = speech_with_pauses(texts, 0.8, 16000, lead_s=0.5)
    assert len(bounds) == 3
    assert bounds[0][0] == pytest.approx(0.5)
    for (_, end), (start, _) in itertools.pairwise(bounds):
        assert start - end == pytest.approx(0.8)
    assert x.size / 16000 == pytest.approx(bounds[-1][1] + 0.5)
    level = speech.SILENCE_LEVEL
    for start, end in bounds:
        a, b = round(start * 16000), round(end * 16000)
        assert abs(x[a]) > level  # speech starts exactly at the boundary
        assert abs(x[b - 1]) > level
        assert np.all(x[a - 800 : a] == 0)  # and silence precedes it


def test_missing_espeak_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(AudioError, match="espeak-ng not found on PATH; install it"):
        synthesize("hello")


@needs_espeak
def test_bad_voice_is_a_clear_error() -> None:
    with pytest.raises(AudioError, match="espeak-ng failed for voice 'xx-nope'"):
        synthesize("hello", voice="xx-nope")
