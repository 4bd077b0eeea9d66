"""Fixtures for the LiveKit plugin tests; the harness lives in livekit_harness.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from livekit_harness import ROOM_RATE, Harness, start_harness
from sarsteer_guard.testing.speech import espeak_available, synthesize


@pytest.fixture(scope="session")
def speech() -> Callable[[str], np.ndarray]:
    """espeak-ng speech at the room rate (cached per text)."""
    if not espeak_available():
        pytest.skip("espeak-ng is not installed: apt-get install espeak-ng")
    cache: dict[str, np.ndarray] = {}

    def say(text: str) -> np.ndarray:
        if text not in cache:
            cache[text] = synthesize(text, rate=ROOM_RATE)
        return cache[text]

    return say


@pytest.fixture
async def harness_factory() -> AsyncIterator[Callable[..., Any]]:
    """Build and start harnesses (see ``start_harness``); all are closed at teardown."""
    made: list[Harness] = []

    async def make(*args: Any, **kwargs: Any) -> Harness:
        h = await start_harness(*args, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.aclose()
