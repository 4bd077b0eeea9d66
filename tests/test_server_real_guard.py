"""End to end: RemoteGuard -> server -> the real Guard with the tiny model, real speech."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sarsteer_guard.guard.events import TextDelta, Turn, TurnDecision, TurnError
from sarsteer_guard.remote import RemoteGuard
from sarsteer_guard.server.settings import ServerSettings
from sarsteer_guard.server.testing import ServerThread, serve_in_thread
from sarsteer_guard.testing.speech import espeak_available, synthesize

pytestmark = [
    pytest.mark.espeak,
    pytest.mark.slow,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed"),
]


def _guard_class() -> Any:
    from sarsteer_guard.guard.core import Guard

    return Guard


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    audit: Path = tmp_path_factory.mktemp("audit") / "audit.db"
    # The default embedded vector store: the tiny model calibrates once per machine.
    guard = _guard_class()(model="tiny", audit=f"sqlite:///{audit}", max_new_tokens=8)
    with serve_in_thread(guard, ServerSettings(), timeout_s=180) as running:
        assert running.service.start_error is None, running.service.start_error
        yield running


async def test_spoken_turn_streams_deltas_and_a_decision(server: ServerThread) -> None:
    speech = synthesize("How do I bake a loaf of bread at home?")
    async with RemoteGuard(server.url) as remote:
        events = [e async for e in remote.respond(Turn(audio=speech, session_id="e2e"))]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    decision = events[-1]
    assert isinstance(decision, TurnDecision)
    assert deltas
    assert "".join(d.text for d in deltas) == decision.text
    assert decision.policy == "default"
    assert decision.session_id == "e2e"
    assert 0 < decision.tokens <= 8
    assert decision.timings.total_ms > 0


async def test_readyz_reports_the_real_guard_ready(server: ServerThread) -> None:
    def get() -> dict[str, Any]:
        with urllib.request.urlopen(server.http + "/readyz", timeout=10) as response:  # noqa: S310
            body: dict[str, Any] = json.loads(response.read())
            return body

    body = await asyncio.to_thread(get)
    assert body["ready"] is True
    assert body["queue_depth"] == 0


async def test_bad_audio_is_a_turn_error_not_a_dead_connection(server: ServerThread) -> None:
    async with RemoteGuard(server.url) as remote:
        odd = [e async for e in remote.respond(Turn(audio=b"\x00\x01\x02"))]  # half a sample
        assert isinstance(odd[-1], TurnError)
        assert odd[-1].kind == "audio"
        speech = synthesize("Hello there.")
        ok = [e async for e in remote.respond(Turn(audio=speech, max_new_tokens=2))]
        assert isinstance(ok[-1], TurnDecision)
