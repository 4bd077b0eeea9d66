"""The official ``openai`` SDK's realtime client against ``/v1/realtime`` on loopback.

Real espeak-ng speech, server VAD through our webrtcvad segmenter, a ScriptedGuard.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from _realtime_kit import TOKEN, chunks, guard, needs_espeak, server, spoken_turn
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection

from sarsteer_guard.server.scripted import ScriptedGuard
from sarsteer_guard.server.testing import ServerThread

__all__ = ["guard", "server"]  # fixtures

TEXT_SESSION: dict[str, Any] = {
    "type": "realtime",
    "output_modalities": ["text"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
        }
    },
}


def client(server: ServerThread, token: str = TOKEN) -> AsyncOpenAI:
    return AsyncOpenAI(
        api_key=token, websocket_base_url=f"ws://127.0.0.1:{server.settings.port}/v1"
    )


async def speak(conn: AsyncRealtimeConnection, audio: bytes) -> None:
    for chunk in chunks(audio):
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())


async def events_until(conn: AsyncRealtimeConnection, kind: str) -> list[dict[str, Any]]:
    """Every event (as dicts) up to and including the first of ``kind``."""
    seen: list[dict[str, Any]] = []
    async for event in conn:
        data = event.to_dict()
        seen.append(data)
        if data["type"] == kind:
            return seen
    raise AssertionError(f"connection ended before {kind}")


def of(seen: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in seen if e["type"] == kind]


@needs_espeak
async def test_spoken_turn_streams_text_and_decision(
    server: ServerThread, guard: ScriptedGuard
) -> None:
    async with client(server).realtime.connect(model="sarsteer-guard") as conn:
        await conn.session.update(session=TEXT_SESSION)  # type: ignore[arg-type]
        await speak(conn, spoken_turn("What is the weather like in Paris today"))
        seen = await events_until(conn, "response.done")
    kinds = [e["type"] for e in seen]
    assert (
        kinds.index("input_audio_buffer.speech_started")
        < kinds.index("input_audio_buffer.speech_stopped")
        < kinds.index("input_audio_buffer.committed")
        < kinds.index("response.created")
    )
    deltas = [e["delta"] for e in of(seen, "response.output_text.delta")]
    assert len(deltas) > 3  # streamed, not one block
    assert "".join(deltas) == guard.reply
    assert of(seen, "response.output_text.done")[0]["text"] == guard.reply
    decision = of(seen, "sarsteer.decision")[0]["decision"]
    assert decision["refused"] is False
    assert decision["policy"] == "scripted"
    done = of(seen, "response.done")[0]["response"]
    assert done["status"] == "completed"
    assert done["metadata"]["sarsteer_refused"] == "false"
    assert done["output"][0]["content"][0]["text"] == guard.reply
    # The guard got the speech (about 2 s of it, trimmed by the VAD) at 16 kHz.
    turn = guard.turns[0]
    assert turn.sample_rate == 16000
    assert 1.0 < ScriptedGuard.audio_seconds(turn) < 4.0


@needs_espeak
async def test_policy_refusal_arrives_as_text_and_decision(
    server: ServerThread, guard: ScriptedGuard
) -> None:
    guard.refuse = True
    async with client(server).realtime.connect(model="sarsteer-guard") as conn:
        await conn.session.update(session=TEXT_SESSION)  # type: ignore[arg-type]
        await speak(conn, spoken_turn("Tell me how to pick a lock"))
        seen = await events_until(conn, "response.done")
    text = "".join(e["delta"] for e in of(seen, "response.output_text.delta"))
    assert text == guard.refusal_message
    assert of(seen, "sarsteer.decision")[0]["decision"]["refused"] is True
    assert of(seen, "response.done")[0]["response"]["metadata"]["sarsteer_refused"] == "true"


@needs_espeak
async def test_barge_in_cancels_the_response(server: ServerThread, guard: ScriptedGuard) -> None:
    guard.delay_s = 0.3  # a slow reply, still streaming when the user speaks again
    async with client(server).realtime.connect(model="sarsteer-guard") as conn:
        await conn.session.update(session=TEXT_SESSION)  # type: ignore[arg-type]
        await speak(conn, spoken_turn("What is the weather like in Paris today"))
        await events_until(conn, "response.output_text.delta")
        await speak(conn, spoken_turn("Stop, tell me about Rome instead"))
        seen = await events_until(conn, "response.done")
        assert seen[-1]["response"]["status"] == "cancelled"
        assert seen[-1]["response"]["status_details"]["reason"] == "turn_detected"
        # The cancelled response ends before the new speech is announced.
        assert "input_audio_buffer.speech_started" not in [e["type"] for e in seen]
        second = await events_until(conn, "response.done")
    assert second[0]["type"] == "input_audio_buffer.speech_started"
    assert guard.cancelled == [guard.turns[0].turn_id]
    assert second[-1]["response"]["status"] == "completed"
    assert "".join(e["delta"] for e in of(second, "response.output_text.delta")) == guard.reply
    # Both turns were in the same guard session (the guard keeps the history).
    assert guard.turns[0].session_id == guard.turns[1].session_id


@needs_espeak
async def test_manual_commit_and_response_cancel(
    server: ServerThread, guard: ScriptedGuard
) -> None:
    guard.delay_s = 0.3
    manual = {**TEXT_SESSION, "audio": {"input": {"turn_detection": None}}}
    async with client(server).realtime.connect(model="sarsteer-guard") as conn:
        await conn.session.update(session=manual)  # type: ignore[arg-type]
        await speak(conn, spoken_turn("What is the weather like in Paris today"))
        await conn.input_audio_buffer.commit()
        await conn.response.create(response={"metadata": {"caller": "test"}})
        await events_until(conn, "response.output_text.delta")
        await conn.response.cancel()
        seen = await events_until(conn, "response.done")
    done = seen[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"]["reason"] == "client_cancelled"
    assert done["metadata"]["caller"] == "test"
    assert guard.cancelled == [guard.turns[0].turn_id]
    assert not of(seen, "input_audio_buffer.speech_started")  # no VAD in manual mode


@pytest.mark.parametrize(
    ("send", "code"),
    [
        (
            {"type": "session.update", "session": {"output_modalities": ["audio"]}},
            "unsupported_feature",
        ),
        (
            {"type": "session.update", "session": {"tools": [{"type": "function", "name": "f"}]}},
            "unsupported_feature",
        ),
        (
            {"type": "response.create", "response": {"output_modalities": ["audio", "text"]}},
            "unsupported_feature",
        ),
        ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty"),
        ({"type": "response.cancel"}, "response_cancel_not_active"),
        ({"type": "conversation.item.delete", "item_id": "nope"}, "item_delete_invalid_item_id"),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": "c", "output": "x"},
            },
            "unsupported_feature",
        ),
        ({"type": "no.such.event"}, "invalid_value"),
    ],
)
async def test_unsupported_and_bad_events_get_error_events(
    server: ServerThread, send: dict[str, Any], code: str
) -> None:
    async with client(server).realtime.connect(model="sarsteer-guard") as conn:
        await events_until(conn, "session.created")
        await conn.send({**send, "event_id": "evt_client_1"})  # type: ignore[arg-type]
        error = (await events_until(conn, "error"))[-1]["error"]
        assert error["code"] == code
        assert error["event_id"] == "evt_client_1"
        assert error["message"]
        # The session stays usable: a valid update still answers.
        await conn.session.update(session={"type": "realtime", "instructions": "be brief"})
        updated = (await events_until(conn, "session.updated"))[-1]
    assert updated["session"]["instructions"] == "be brief"
    assert updated["session"]["output_modalities"] == ["text"]


async def test_wrong_token_is_refused_before_the_socket_opens(server: ServerThread) -> None:
    wrong = client(server, token="wrong-token-0123456789abcdef")  # noqa: S106
    with pytest.raises(Exception, match="403"):
        await wrong.realtime.connect(model="m").enter()
