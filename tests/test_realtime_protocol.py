"""The realtime endpoint on the wire: schema, formats, items, limits and drain."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _realtime_kit import TOKEN, chunks, guard, needs_espeak, server, spoken_turn
from test_server_shutdown import serve_process
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from sarsteer_guard.server.realtime.audio import decode
from sarsteer_guard.server.realtime.errors import RealtimeError
from sarsteer_guard.server.realtime.session import AudioFormat, SessionConfig, apply_update
from sarsteer_guard.server.scripted import ScriptedGuard
from sarsteer_guard.server.settings import ServerSettings, TokenSet
from sarsteer_guard.server.testing import ServerThread, serve_in_thread
from sarsteer_guard.testing.speech import synthesize

__all__ = ["guard", "server"]  # fixtures

with warnings.catch_warnings():  # the reference G.711 codec (removed in Python 3.13)
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "realtime.schema.json"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def url(server: ServerThread) -> str:
    return f"ws://127.0.0.1:{server.settings.port}/v1/realtime?model=m"


async def until(ws: ClientConnection, kind: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 20))
        seen.append(event)
        if event["type"] == kind:
            return event


def append(audio: bytes) -> str:
    return json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()}
    )


@needs_espeak
async def test_every_event_matches_the_published_schema(
    server: ServerThread, guard: ScriptedGuard
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    sent: list[dict[str, Any]] = [
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "output_modalities": ["text"],
                "audio": {"input": {"turn_detection": None}},
            },
        },
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": "be brief"}],
            },
        },
        {"type": "input_audio_buffer.commit", "event_id": "e1"},  # empty: an error
        {"type": "response.create", "response": {"metadata": {"k": "v"}}},  # nothing to answer
    ]
    seen: list[dict[str, Any]] = []
    async with connect(url(server), additional_headers=AUTH) as ws:
        for event in sent:
            await ws.send(json.dumps(event))
        await until(ws, "response.done", seen)
        for chunk in chunks(spoken_turn("What time is it in Tokyo")):
            await ws.send(append(chunk))
        for event in ({"type": "input_audio_buffer.commit"}, {"type": "response.create"}):
            await ws.send(json.dumps(event))
            sent.append(event)
        await until(ws, "response.done", seen)
    for event in [*sent, *seen]:
        errors = [e.message for e in validator.iter_errors(event)]
        assert errors == [], (event, errors)
    kinds = {e["type"] for e in seen}
    assert {"session.created", "session.updated", "error", "sarsteer.decision"} <= kinds
    incomplete = next(e for e in seen if e["type"] == "response.done")["response"]
    assert incomplete["status"] == "incomplete"
    assert incomplete["status_details"]["reason"] == "sarsteer_no_user_audio"
    assert len(guard.turns) == 1  # only the spoken turn reached the guard
    for bad in (
        {"type": "session.update", "session": {"output_modalities": ["audio"]}},
        {"type": "session.update", "session": {"tools": [{"type": "function"}]}},
    ):
        assert not validator.is_valid(bad)  # the schema says what the server refuses


def test_g711_decoding_matches_the_reference_tables() -> None:
    codes = bytes(range(256))
    for encoding, reference in (("pcmu", audioop.ulaw2lin), ("pcma", audioop.alaw2lin)):
        ours = decode(codes, AudioFormat(encoding, 8000))  # type: ignore[arg-type]
        expected = np.frombuffer(reference(codes, 2), dtype="<i2") / 32768.0
        np.testing.assert_allclose(ours, expected, atol=1e-6)


@needs_espeak
async def test_g711_input_with_an_audio_item_reaches_the_guard_at_16k(
    server: ServerThread, guard: ScriptedGuard
) -> None:
    speech = synthesize("Good morning to you", rate=8000)
    ulaw = audioop.lin2ulaw((np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes(), 2)
    seen: list[dict[str, Any]] = []
    async with connect(url(server), additional_headers=AUTH) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "audio": {
                            "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None}
                        }
                    },
                }
            )
        )
        updated = await until(ws, "session.updated", seen)
        assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": base64.b64encode(ulaw).decode()}],
        }
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await ws.send(json.dumps({"type": "response.create"}))
        done = await until(ws, "response.done", seen)
    assert done["response"]["status"] == "completed"
    turn = guard.turns[0]
    assert turn.sample_rate == 16000
    assert ScriptedGuard.audio_seconds(turn) == pytest.approx(len(speech) / 8000, abs=0.01)


def test_session_update_keeps_the_old_config_when_refused() -> None:
    config = SessionConfig(id="s")
    with pytest.raises(RealtimeError) as refused:
        apply_update(
            config,
            {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}},
            max_turn_s=30.0,
        )
    assert refused.value.code == "unsupported_feature"
    with pytest.raises(RealtimeError, match="rate must be one of"):
        apply_update(
            config,
            {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 11025}}}},
            max_turn_s=30.0,
        )
    beta = apply_update(
        config,
        {
            "input_audio_format": "g711_alaw",
            "turn_detection": None,
            "modalities": ["text"],
            "max_response_output_tokens": 64,
        },
        max_turn_s=30.0,
    )
    assert beta.input_format == AudioFormat("pcma", 8000)
    assert beta.turn_detection is None
    assert beta.max_output_tokens == 64
    vad = apply_update(
        config,
        {
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.9,
                        "prefix_padding_ms": 200,
                        "silence_duration_ms": 700,
                    }
                }
            }
        },
        max_turn_s=30.0,
    ).turn_detection
    assert vad is not None
    seg = vad.segmenter(30.0)
    assert (seg.aggressiveness, seg.padding_ms, seg.end_silence_ms) == (3, 200, 700)


@needs_espeak
async def test_manual_buffer_over_the_turn_limit_is_refused(guard: ScriptedGuard) -> None:
    settings = ServerSettings(tokens=TokenSet.from_tokens([TOKEN]), max_turn_s=1.0)
    seen: list[dict[str, Any]] = []
    with serve_in_thread(guard, settings) as running:
        async with connect(url(running), additional_headers=AUTH) as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {"audio": {"input": {"turn_detection": None}}},
                    }
                )
            )
            for chunk in chunks(spoken_turn("This sentence is longer than one second")):
                await ws.send(append(chunk))
            error = await until(ws, "error", seen)
    assert error["error"]["code"] == "input_audio_buffer_too_large"


@needs_espeak
async def test_sigterm_fails_the_running_response_and_closes_going_away() -> None:
    """A real ``serve`` process: the drain deadline passes while a response streams."""
    seen: list[dict[str, Any]] = []
    args = ("--scripted-delay-s", "0.3", "--shutdown-grace-s", "0.2")
    with serve_process(*args) as (proc, turns_url):
        realtime_url = turns_url.replace("/v1/turns", "/v1/realtime")
        async with connect(realtime_url) as ws:
            for chunk in chunks(spoken_turn("What is the weather like in Paris today")):
                await ws.send(append(chunk))
            await until(ws, "response.output_text.delta", seen)
            proc.send_signal(signal.SIGTERM)
            done = await until(ws, "response.done", seen)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert proc.wait(timeout=15) == 0
    assert done["response"]["status"] == "failed"
    assert done["response"]["status_details"]["error"]["code"] == "sarsteer_shutting_down"
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001


async def test_origin_check_applies(guard: ScriptedGuard) -> None:
    settings = replace(ServerSettings(tokens=TokenSet.from_tokens([TOKEN])))
    with serve_in_thread(guard, settings) as running:
        with pytest.raises(Exception, match="403"):
            await connect(
                url(running), additional_headers={**AUTH, "Origin": "https://evil.example"}
            )
        async with connect(url(running), additional_headers=AUTH) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
