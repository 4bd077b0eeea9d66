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


KIDS_POLICY = """\
name: realtime-kids
version: "1"
model: "*"
calibration: {k: 10, lambda: 1.0}
max_alpha: 0.3
defaults: {preset: balanced}
rules:
  - name: kids-under-13
    when: {channel: kids, age: {lt: 13}}
    alpha: 0.3
"""


@pytest.fixture(scope="module")
def kids_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    from sarsteer_guard.guard.core import Guard

    policy = tmp_path_factory.mktemp("policy") / "kids.yaml"
    policy.write_text(KIDS_POLICY, encoding="utf-8")
    guard = Guard(model="tiny", policy=policy, max_new_tokens=4)
    settings = ServerSettings(tokens=TokenSet.from_tokens([TOKEN]))
    with serve_in_thread(guard, settings, timeout_s=180) as running:
        assert running.service.start_error is None, running.service.start_error
        yield running


async def _decision(server: ServerThread, session: dict[str, Any]) -> dict[str, Any]:
    client = AsyncOpenAI(
        api_key=TOKEN, websocket_base_url=f"ws://127.0.0.1:{server.settings.port}/v1"
    )
    async with client.realtime.connect(model="tiny") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        if session:
            # Not in the SDK's types: sent as a raw event, as any client can.
            await conn.send({"type": "session.update", "session": session})  # type: ignore[arg-type]
        for chunk in chunks(spoken_turn("Set a timer for ten minutes.")):
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        async for event in conn:
            payload = event.to_dict()
            if payload["type"] == "sarsteer.decision":
                decision: dict[str, Any] = payload["decision"]
                return decision
    raise AssertionError("no decision event")


async def test_sarsteer_context_selects_the_policy_rule(kids_server: ServerThread) -> None:
    """A context rule of a real policy matches on /v1/realtime (and only with its context)."""
    kid = await _decision(
        kids_server,
        {"type": "realtime", "sarsteer_context": {"channel": "kids", "age": 9}},
    )
    assert kid["rule"] == "kids-under-13"
    assert kid["alpha"] == pytest.approx(0.3)
    adult = await _decision(kids_server, {})
    assert adult["rule"] is None
    assert adult["alpha"] == pytest.approx(0.1)
