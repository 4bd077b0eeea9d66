"""Audio memory is bounded at the model's size, per turn, connection, server (issue 10 item 9)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from _server_fakes import FakeSocket, finals_by_turn
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sarsteer_guard.server.connection import TurnConnection
from sarsteer_guard.server.limits import MODEL_BYTES_PER_S, TurnAudio
from sarsteer_guard.server.protocol import encode_audio_frame
from sarsteer_guard.server.service import GuardService
from sarsteer_guard.server.settings import ServerSettings
from sarsteer_guard.server.testing import serve_in_thread
from sarsteer_guard.testing.scripted import ScriptedGuard

HIGH_RATE = 384_000


def _stereo_f32(seconds: float, rate: int = HIGH_RATE) -> bytes:
    frames = int(seconds * rate)
    t = np.arange(frames, dtype=np.float32) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([tone, tone], axis=1).astype("<f4").tobytes()


def _chunks(pcm: bytes, size: int = 60_000) -> list[bytes]:
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


async def _service(guard: ScriptedGuard, **settings: Any) -> GuardService:
    await guard.start()
    service = GuardService(guard, ServerSettings(rate_limit_per_s=0, **settings))
    service.started = True
    return service


@pytest.fixture
def guard() -> ScriptedGuard:
    return ScriptedGuard(reply="ok", delay_s=0.0)


@contextlib.asynccontextmanager
async def _connection(
    service: GuardService,
) -> AsyncIterator[tuple[TurnConnection, FakeSocket]]:
    ws = FakeSocket()
    connection = TurnConnection(ws, service)  # type: ignore[arg-type]
    runner = asyncio.get_running_loop().create_task(connection.run())
    await ws.wait_for(lambda: bool(ws.sent))
    yield connection, ws
    ws.feed_disconnect()
    await asyncio.wait_for(runner, 10)


def _send_turn(ws: FakeSocket, turn_id: str, pcm: bytes, end: bool = True, **fmt: Any) -> None:
    ws.feed_text({"type": "turn.start", "turn_id": turn_id, **fmt})
    for chunk in _chunks(pcm):
        ws.feed_bytes(encode_audio_frame(turn_id, chunk))
    if end:
        ws.feed_text({"type": "turn.end", "turn_id": turn_id})


HIGH = {"sample_rate": HIGH_RATE, "channels": 2, "format": "float32"}


async def test_high_rate_audio_is_held_at_16k_mono(guard: ScriptedGuard) -> None:
    service = await _service(guard)
    async with _connection(service) as (connection, ws):
        _send_turn(ws, "hi", _stereo_f32(1.0), end=False, **HIGH)
        ws.feed_text({"type": "turn.end", "turn_id": "fence"})  # an error once all is read
        await ws.wait_for(lambda: any(m["type"] == "error" for m in ws.sent))
        held = connection.collecting["hi"].audio.size
        # 1 s at 384 kHz stereo float32 is 3,072,000 bytes; held: about 64,000.
        assert held <= 1.01 * MODEL_BYTES_PER_S
        assert connection.audio_budget.used == held == service.audio_budget.used
        ws.feed_text({"type": "turn.end", "turn_id": "hi"})
        await ws.wait_for(lambda: "hi" in finals_by_turn(ws.sent))
        turn = guard.turns[0]
        assert (turn.sample_rate, turn.channels, turn.sample_format) == (16000, 1, "float32")
        assert isinstance(turn.audio, bytes)
        samples = np.frombuffer(turn.audio, "<f4")
        assert abs(len(samples) - 16000) <= 32
        assert 0.3 < float(np.abs(samples[1000:-1000]).max()) < 0.6  # the tone survived
        # Memory returns when the turn ends.
        await ws.wait_for(lambda: service.audio_budget.used == 0)
        assert connection.audio_budget.used == 0


async def test_the_per_turn_limit_counts_seconds_not_declared_bytes(guard: ScriptedGuard) -> None:
    service = await _service(guard, max_turn_s=1.0)
    async with _connection(service) as (_, ws):
        _send_turn(ws, "long", _stereo_f32(1.2), **HIGH)
        await ws.wait_for(lambda: "long" in finals_by_turn(ws.sent))
        assert finals_by_turn(ws.sent)["long"] == ["error:bad_request"]
        assert service.audio_budget.used == 0


async def test_connection_budget_refuses_and_frees(guard: ScriptedGuard) -> None:
    # 0.1 MiB = 104,857 bytes: one second of held audio fits, two do not.
    service = await _service(guard, max_audio_mb_per_connection=0.1)
    async with _connection(service) as (connection, ws):
        _send_turn(ws, "a", _stereo_f32(1.0), end=False, **HIGH)
        _send_turn(ws, "b", _stereo_f32(1.0), end=False, **HIGH)
        await ws.wait_for(lambda: "b" in finals_by_turn(ws.sent))
        assert finals_by_turn(ws.sent)["b"] == ["error:rate_limited"]
        assert "--max-audio-mb-per-connection" in ws.sent[-1]["message"]
        ws.feed_text({"type": "turn.end", "turn_id": "a"})
        await ws.wait_for(lambda: finals_by_turn(ws.sent).get("a") == ["decision"])
        await ws.wait_for(lambda: connection.audio_budget.used == 0)
        _send_turn(ws, "c", _stereo_f32(1.0), **HIGH)  # room again
        await ws.wait_for(lambda: finals_by_turn(ws.sent).get("c") == ["decision"])


async def test_server_budget_spans_connections(guard: ScriptedGuard) -> None:
    service = await _service(guard, max_audio_mb=0.1)
    async with _connection(service) as (_, first):
        _send_turn(first, "a", _stereo_f32(1.0), end=False, **HIGH)
        first.feed_text({"type": "turn.end", "turn_id": "fence"})  # an error once all is read
        await first.wait_for(lambda: any(m["type"] == "error" for m in first.sent))
        async with _connection(service) as (_, second):
            _send_turn(second, "b", _stereo_f32(1.0), **HIGH)
            await second.wait_for(lambda: "b" in finals_by_turn(second.sent))
            assert finals_by_turn(second.sent)["b"] == ["error:rate_limited"]
            assert "--max-audio-mb" in second.sent[-1]["message"]
    assert service.audio_budget.used == 0  # both connections gone: everything returned


def test_small_formats_pass_through_unchanged() -> None:
    for rate, channels, fmt in [(16000, 1, "int16"), (8000, 1, "int16"), (16000, 1, "float32")]:
        audio = TurnAudio(rate, channels, fmt)  # type: ignore[arg-type]
        assert audio.passthrough
        pcm = b"\x01\x02" * 500
        audio.add(audio.convert(pcm))
        assert audio.finish() == (pcm, rate, channels, fmt)
    assert not TurnAudio(48000, 1, "int16").passthrough


async def test_connection_limit_refuses_the_next_handshake() -> None:
    guard = ScriptedGuard(reply="ok", delay_s=0.0)
    with serve_in_thread(guard, ServerSettings(max_connections=2)) as server:
        async with connect(server.url) as one, connect(server.url) as two:
            for ws in (one, two):
                assert json.loads(await ws.recv())["type"] == "hello"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.url):
                    pass
            assert refused.value.response.status_code == 503
        for _ in range(100):  # both closed: a new connection is accepted again
            if not server.service.connections:
                break
            await asyncio.sleep(0.02)
        async with connect(server.url) as again:
            assert json.loads(await again.recv())["type"] == "hello"
