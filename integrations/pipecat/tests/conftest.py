"""Fixtures for the Pipecat integration tests: real espeak-ng speech cut into 20 ms frames."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from pipecat.frames.frames import InputAudioRawFrame

RATE = 16000


def _synthesize(text: str) -> np.ndarray:
    from sarsteer_guard.testing.speech import espeak_available, synthesize

    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return synthesize(text, rate=RATE)


@pytest.fixture(scope="session")
def speech() -> Callable[[str], np.ndarray]:
    """Synthesise (and cache) float32 16 kHz speech for a sentence."""
    cache: dict[str, np.ndarray] = {}

    def get(text: str) -> np.ndarray:
        if text not in cache:
            cache[text] = _synthesize(text)
        return cache[text]

    return get


def audio_frames(x: np.ndarray, rate: int = RATE, ms: int = 20) -> list[InputAudioRawFrame]:
    """Split float32 mono audio into int16 InputAudioRawFrames like a transport does."""
    pcm = (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    step = rate * ms // 1000 * 2
    return [
        InputAudioRawFrame(audio=pcm[i : i + step], sample_rate=rate, num_channels=1)
        for i in range(0, len(pcm), step)
    ]


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.float32)


@pytest.fixture(scope="session")
def to_frames() -> Callable[..., list[InputAudioRawFrame]]:
    """``to_frames(audio)``: 20 ms int16 InputAudioRawFrames (a fixture: no conftest imports)."""
    return audio_frames


@pytest.fixture(scope="session")
def pause() -> Callable[[float], np.ndarray]:
    """``pause(seconds)``: digital silence at 16 kHz."""
    return silence
