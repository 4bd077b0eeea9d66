"""``/v1/realtime`` in front of the real Guard (tiny model): the openai SDK, real speech."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from _realtime_kit import TOKEN, chunks, needs_espeak, spoken_turn
from openai import AsyncOpenAI

from sarsteer_guard.server.settings import ServerSettings, TokenSet
from sarsteer_guard.server.testing import ServerThread, serve_in_thread

pytestmark = [pytest.mark.espeak, pytest.mark.slow, needs_espeak]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    from sarsteer_guard.guard.core import Guard

    guard = Guard(model="tiny", max_new_tokens=8)
    settings = ServerSettings(tokens=TokenSet.from_tokens([TOKEN]))
    with serve_in_thread(guard, settings, timeout_s=180) as running:
        assert running.service.start_error is None, running.service.start_error
        yield running


async def test_two_spoken_turns_stream_text_and_decisions(server: ServerThread) -> None:
    client = AsyncOpenAI(
        api_key=TOKEN, websocket_base_url=f"ws://127.0.0.1:{server.settings.port}/v1"
    )
    responses: list[list[dict[str, Any]]] = []
    async with client.realtime.connect(model="tiny") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        for text in ("How do I bake bread at home?", "And how long should it rise?"):
            for chunk in chunks(spoken_turn(text)):
                await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
            seen: list[dict[str, Any]] = []
            async for event in conn:
                seen.append(event.to_dict())
                if seen[-1]["type"] == "response.done":
                    break
            responses.append(seen)
    for seen in responses:
        done = seen[-1]["response"]
        assert done["status"] == "completed"
        decision = next(e for e in seen if e["type"] == "sarsteer.decision")["decision"]
        assert decision["policy"] == done["metadata"]["sarsteer_policy"]
        assert decision["steered"] is True or decision["alpha"] == 0
        streamed = "".join(e["delta"] for e in seen if e["type"] == "response.output_text.delta")
        final = next(e for e in seen if e["type"] == "response.output_text.done")["text"]
        assert final == decision["text"]
        assert streamed  # the tiny model always says something
    # Both turns were one guard session: the second decision names the same session.
    ids = [
        next(e for e in s if e["type"] == "sarsteer.decision")["decision"]["session_id"]
        for s in responses
    ]
    assert ids[0] == ids[1]
