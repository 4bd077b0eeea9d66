"""Shared pieces of the realtime endpoint's tests: a served ScriptedGuard and real speech."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from sarsteer_guard.server.scripted import ScriptedGuard
from sarsteer_guard.server.settings import ServerSettings, TokenSet
from sarsteer_guard.server.testing import ServerThread, serve_in_thread
from sarsteer_guard.testing.speech import espeak_available, synthesize

TOKEN = "realtime-worker-token-0123456789"  # noqa: S105 (test token)

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples as little-endian int16 bytes."""
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def spoken_turn(text: str, rate: int = 24000, lead_s: float = 0.3, tail_s: float = 1.0) -> bytes:
    """espeak-ng speech with silence around it, as pcm16 at ``rate``."""
    speech = synthesize(text, rate=rate)
    lead = np.zeros(int(lead_s * rate), np.float32)
    tail = np.zeros(int(tail_s * rate), np.float32)
    return pcm16(np.concatenate([lead, speech, tail]))


def chunks(audio: bytes, rate: int = 24000, ms: int = 100) -> Iterator[bytes]:
    """``audio`` in chunks of ``ms`` milliseconds."""
    step = rate * 2 * ms // 1000
    for i in range(0, len(audio), step):
        yield audio[i : i + step]


@pytest.fixture
def guard() -> ScriptedGuard:
    """A scripted guard with a reply long enough to barge into."""
    return ScriptedGuard(reply="Sure, here are the steps you asked for today.", delay_s=0.02)


@pytest.fixture
def server(guard: ScriptedGuard) -> Iterator[ServerThread]:
    """The guard served on loopback with a worker token."""
    with serve_in_thread(guard, ServerSettings(tokens=TokenSet.from_tokens([TOKEN]))) as running:
        yield running
