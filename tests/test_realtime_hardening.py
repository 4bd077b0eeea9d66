"""/v1/realtime holds the same hardening as /v1/turns: deadlines, bounded input, budgets.

Driven in memory (FakeSocket, ScriptedGuard, no model, no espeak): every hostile input
is answered with an ``error`` event and the connection keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _server_fakes import FakeSocket

from sarsteer_guard.server.connection import TurnConnection
from sarsteer_guard.server.limits import MIB, TurnAudio
from sarsteer_guard.server.protocol import encode_audio_frame
from sarsteer_guard.server.realtime.audio import SpeechStarted, SpeechStopped
from sarsteer_guard.server.realtime.connection import RealtimeConnection
from sarsteer_guard.server.realtime.errors import RealtimeError
from sarsteer_guard.server.realtime.session import SessionConfig, apply_update
from sarsteer_guard.server.service import GuardService
from sarsteer_guard.server.settings import ServerSettings
from sarsteer_guard.testing.scripted import ScriptedGuard

MANUAL = {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}


class Session:
    """A RealtimeConnection on a FakeSocket, served by a ScriptedGuard."""

    def __init__(self, guard: ScriptedGuard, service: GuardService, model: str | None) -> None:
        self.guard, self.service, self.ws = guard, service, FakeSocket()
        self.conn = RealtimeConnection(self.ws, service, model)  # type: ignore[arg-type]
        self.runner = asyncio.get_running_loop().create_task(self.conn.run())

    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.ws.sent if e["type"] == "error"]

    async def ask(self, event: dict[str, Any] | str, then: str) -> dict[str, Any]:
        """Send ``event`` and wait for the next server event of type ``then``."""
        seen = len(self.ws.sent)
        if isinstance(event, str):
            self.ws.feed_raw(event)
        else:
            self.ws.feed_text(event)
        await self.ws.wait_for(lambda: any(e["type"] == then for e in self.ws.sent[seen:]))
        return next(e for e in self.ws.sent[seen:] if e["type"] == then)

    async def still_serving(self) -> None:
        """A plain session.update is still answered: the connection survived."""
        await self.ask({"type": "session.update", "session": {}}, "session.updated")
        assert not self.runner.done()


Opener = Callable[..., Awaitable[Session]]


@pytest.fixture
async def opened() -> AsyncIterator[Opener]:
    """Open sessions with settings overrides; on teardown each must have freed everything."""
    sessions: list[Session] = []

    async def open_one(
        *, model: str | None = "m", reply: str = "ok then", **overrides: Any
    ) -> Session:
        guard = ScriptedGuard(reply=reply, delay_s=0.01)
        await guard.start()
        service = GuardService(guard, ServerSettings(rate_limit_per_s=0, **overrides))
        service.started = True
        session = Session(guard, service, model)
        await session.ws.wait_for(lambda: bool(session.ws.sent))
        sessions.append(session)
        return session

    yield open_one
    for session in sessions:
        session.ws.block_sends = False
        session.ws.feed_disconnect()
        await asyncio.wait_for(session.runner, 10)
        assert session.service.audio_budget.used == 0  # every byte charged came back
        assert session.conn not in session.service.connections


@pytest.fixture
async def open_session(opened: Opener) -> Session:
    return await opened()


def audio_item(seconds: float, rate: int = 24000) -> dict[str, Any]:
    pcm = (np.full(int(seconds * rate), 1000, dtype="<i2")).tobytes()
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": base64.b64encode(pcm).decode()}],
        },
    }


def append(seconds: float, rate: int = 24000) -> dict[str, Any]:
    pcm = (np.full(int(seconds * rate), 1000, dtype="<i2")).tobytes()
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}


# -- 1. send deadline, abort, drain ----------------------------------------------------------
async def test_a_client_that_stops_reading_is_cut_and_its_response_freed(opened: Opener) -> None:
    s = await opened(send_timeout_s=0.2, reply=" ".join(["word"] * 200))
    await s.ask(MANUAL, "session.updated")
    await s.ask(audio_item(0.5), "conversation.item.done")
    await s.ask({"type": "response.create"}, "response.output_text.delta")
    s.ws.block_sends = True  # the client stops reading mid-response
    await asyncio.wait_for(s.runner, 5)  # run() returns: the connection is cut
    assert s.conn.open_turns == 0
    assert s.service.open_turns() == 0
    assert s.guard.cancelled  # the guard stopped generating


async def test_drain_deadline_holds_when_a_realtime_client_does_not_read(
    opened: Opener,
) -> None:
    s = await opened(send_timeout_s=30, shutdown_grace_s=0.2, reply=" ".join(["w"] * 500))
    await s.ask(MANUAL, "session.updated")
    await s.ask(audio_item(0.5), "conversation.item.done")
    await s.ask({"type": "response.create"}, "response.output_text.delta")
    s.ws.block_sends = True
    began = time.monotonic()
    await asyncio.wait_for(s.service.drain(), 10)
    assert time.monotonic() - began < 0.2 + 1.5  # grace + the fixed close allowance
    await asyncio.wait_for(s.runner, 5)  # abort() ended it
    assert s.service.open_turns() == 0


async def test_a_bug_in_a_handler_closes_with_1011(
    open_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = open_session

    async def broken(_event: object) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(s.conn, "_handle", broken)
    s.ws.feed_text({"type": "input_audio_buffer.clear"})
    await asyncio.wait_for(s.runner, 5)
    assert s.ws.closed_with == 1011


# -- 2. bounded JSON --------------------------------------------------------------------------
@pytest.mark.parametrize("frame", ["[" * 50_000, '{"type": "x", "n": ' + "9" * 5000 + "}", "{"])
async def test_hostile_json_is_an_invalid_json_error(open_session: Session, frame: str) -> None:
    s = open_session
    error = await s.ask(frame, "error")
    assert error["error"]["code"] == "invalid_json"
    await s.still_serving()


# -- 3. numbers in session.update ------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"session.update","session":{"turn_detection":{"threshold":NaN}}}',
        '{"type":"session.update","session":{"turn_detection":{"silence_duration_ms":1e999}}}',
        '{"type":"session.update","session":{"turn_detection":{"threshold":Infinity}}}',
        '{"type":"session.update","session":{"audio":{"output":{"voice":NaN}}}}',
        '{"type":"session.update","session":{"audio":{"output":{"speed":-Infinity}}}}',
        '{"type":"session.update","session":{"turn_detection":{"create_response":"no"}}}',
    ],
)
async def test_non_finite_or_mistyped_settings_are_refused_and_change_nothing(
    open_session: Session, raw: str
) -> None:
    s = open_session
    before = s.conn.config
    error = await s.ask(raw, "error")
    assert error["error"]["code"] == "invalid_value"
    assert s.conn.config == before
    await s.still_serving()


def test_explicit_zero_is_kept_and_vad_is_checked_against_max_turn_s() -> None:
    config = SessionConfig(id="s")
    zero = {"turn_detection": {"prefix_padding_ms": 0, "threshold": 0}}
    vad = apply_update(config, zero, max_turn_s=30.0).turn_detection
    assert vad is not None
    assert (vad.prefix_padding_ms, vad.threshold) == (0, 0.0)
    long_pad = {"turn_detection": {"prefix_padding_ms": 1500}}
    assert apply_update(config, long_pad, max_turn_s=30.0).turn_detection is not None
    with pytest.raises(RealtimeError, match="max_turn_s"):
        apply_update(config, long_pad, max_turn_s=1.0)  # the server's limit, not 30 s


# -- 4. client strings ------------------------------------------------------------------------
LONE = "\\ud800"  # a lone surrogate, as JSON can carry it


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"session.update","event_id":"e' + LONE + '","session":{}}',
        '{"type":"session.update","session":{"instructions":"be ' + LONE + '"}}',
        '{"type":"session.update","session":{"model":"m' + LONE + '"}}',
        '{"type":"session.update","session":{"model":"m\\nx"}}',
        '{"type":"conversation.item.create","item":{"role":"system","content":'
        '[{"type":"input_text","text":"x' + LONE + '"}]}}',
        '{"type":"conversation.item.create","item":{"id":"i' + LONE + '","role":"system",'
        '"content":[{"type":"input_text","text":"x"}]}}',
        '{"type":"conversation.item.retrieve","item_id":"i' + LONE + '"}',
        '{"type":"response.create","response":{"metadata":{"k":"v' + LONE + '"}}}',
        '{"type":"conversation.item.retrieve","item_id":"' + "i" * 129 + '"}',
    ],
)
async def test_bad_client_text_is_an_error_never_a_crash(open_session: Session, raw: str) -> None:
    s = open_session
    error = await s.ask(raw, "error")
    assert error["error"]["code"] == "invalid_value"
    await s.still_serving()


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"sarsteer_refused": "false"},  # would spoof the guard's decision
    ],
)
async def test_metadata_is_bounded_and_cannot_spoof_the_decision(
    open_session: Session, metadata: dict[str, str]
) -> None:
    s = open_session
    error = await s.ask({"type": "response.create", "response": {"metadata": metadata}}, "error")
    assert error["error"]["param"] == "response.metadata"
    ok = {f"k{i}": "v" * 512 for i in range(16)}
    done = await s.ask({"type": "response.create", "response": {"metadata": ok}}, "response.done")
    assert done["response"]["metadata"] == ok  # at OpenAI's limits: accepted


async def test_a_bad_model_query_parameter_is_an_error_event(
    opened: Opener,
) -> None:
    s = await opened(model="m\ud800")
    assert s.ws.sent[0]["session"]["model"] == "sarsteer-guard"
    await s.ws.wait_for(lambda: bool(s.errors()))
    assert s.errors()[0]["param"] == "model"
    await s.still_serving()


# -- 5. policy context --------------------------------------------------------------------------
async def test_sarsteer_context_reaches_the_guard_with_each_response(
    open_session: Session,
) -> None:
    s = open_session
    context = {"channel": "kids", "age": 9, "strict": True, "score": 0.5}
    session = {"audio": {"input": {"turn_detection": None}}, "sarsteer_context": context}
    update = {"type": "session.update", "session": session}
    updated = await s.ask(update, "session.updated")
    assert updated["session"]["sarsteer_context"] == context
    await s.ask(audio_item(0.5), "conversation.item.done")
    done = await s.ask({"type": "response.create"}, "response.done")
    assert done["response"]["status"] == "completed"
    assert dict(s.guard.turns[0].context) == context  # a context rule can match it


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"session.update","session":{"sarsteer_context":{"age":NaN}}}',
        '{"type":"session.update","session":{"sarsteer_context":{"x":{"nested":1}}}}',
        '{"type":"session.update","session":{"sarsteer_context":{"x":"a' + LONE + '"}}}',
        '{"type":"session.update","session":{"sarsteer_context":"kids"}}',
    ],
)
async def test_bad_sarsteer_context_is_refused(open_session: Session, raw: str) -> None:
    s = open_session
    error = await s.ask(raw, "error")
    assert error["error"]["param"] == "session.sarsteer_context"
    assert s.conn.config.context == {}
    await s.still_serving()


# -- 6. audio budgets ---------------------------------------------------------------------------
async def test_the_connection_budget_drops_the_newest_audio(opened: Opener) -> None:
    s = await opened(max_audio_mb_per_connection=0.1)
    await s.ask(MANUAL, "session.updated")
    await s.ask(audio_item(1.0), "conversation.item.done")  # 64 kB committed
    held = s.conn.audio_budget.used
    assert held == s.service.audio_budget.used == 64_000
    error = await s.ask(append(1.0), "error")  # 1 s at 24 kHz: 96 kB more, over 0.1 MiB
    assert error["error"]["code"] == "input_audio_buffer_too_large"
    assert s.conn.buffer.held_bytes == 0  # the newest audio was dropped
    assert s.conn.audio_budget.used == held == s.service.audio_budget.used
    big = await s.ask(audio_item(1.0), "error")  # a second committed second: refused first
    assert big["error"]["code"] == "input_audio_buffer_too_large"
    assert s.conn.audio_budget.used <= s.conn.audio_budget.limit
    done = await s.ask({"type": "response.create"}, "response.done")
    assert done["response"]["status"] == "completed"
    await s.ws.wait_for(lambda: s.conn.running is None)
    assert s.conn.audio_budget.used == s.service.audio_budget.used == 0  # turn done: freed


async def test_the_server_budget_is_charged_too(opened: Opener) -> None:
    s = await opened(max_audio_mb=0.05)
    await s.ask(MANUAL, "session.updated")
    error = await s.ask(append(1.0), "error")
    assert error["error"]["code"] == "sarsteer_audio_budget_exceeded"
    assert s.service.audio_budget.used == 0
    s.ws.feed_text(append(0.1))  # 9.6 kB fits
    await s.ws.wait_for(lambda: s.service.audio_budget.used > 0)
    assert s.service.audio_budget.used == s.conn.buffer.held_bytes


# -- 8. every buffer event is sent before a commit's error ---------------------------------------
async def test_a_failed_commit_does_not_drop_the_buffers_later_events(
    open_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = open_session
    too_long = np.zeros(31 * 16000, dtype=np.float32)  # past max_turn_s (30 s)
    changes = [SpeechStarted(0), SpeechStopped(31_000, too_long), SpeechStarted(31_100)]
    monkeypatch.setattr(s.conn.buffer, "append", lambda _audio: changes)
    monkeypatch.setattr(s.conn.buffer, "clear", lambda: None)
    seen = len(s.ws.sent)
    s.ws.feed_text(append(0.01))
    await s.ws.wait_for(lambda: any(e["type"] == "error" for e in s.ws.sent[seen:]))
    kinds = [e["type"] for e in s.ws.sent[seen:]]
    assert kinds == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.speech_started",  # sent although the commit before it failed
        "error",
    ]


# -- 7. /v1/turns: the resampler's tail is checked before it is charged --------------------------
async def test_resampler_tail_past_the_budget_fails_the_turn_without_overshoot() -> None:
    pcm = np.full(48_000 // 10, 0.1, dtype="<f4").tobytes()  # 0.1 s at 48 kHz float32
    probe = TurnAudio(48_000, 1, "float32")
    body = len(TurnAudio(48_000, 1, "float32").convert(pcm))
    probe.add(probe.convert(pcm))
    probe.finish()
    assert probe.size > body  # the resampler's tail exists
    guard = ScriptedGuard(reply="ok", delay_s=0.0)
    await guard.start()
    settings = ServerSettings(rate_limit_per_s=0, max_audio_mb_per_connection=(body + 0.5) / MIB)
    service = GuardService(guard, settings)
    service.started = True
    ws = FakeSocket()
    connection = TurnConnection(ws, service)  # type: ignore[arg-type]
    runner = asyncio.get_running_loop().create_task(connection.run())
    start = {"type": "turn.start", "turn_id": "t", "sample_rate": 48000}
    ws.feed_text({**start, "format": "float32"})
    ws.feed_bytes(encode_audio_frame("t", pcm))
    await ws.wait_for(lambda: connection.audio_budget.used == body)  # the body fits exactly
    assert connection.audio_budget.limit == body
    ws.feed_text({"type": "turn.end", "turn_id": "t"})
    await ws.wait_for(lambda: any(m["type"] == "error" for m in ws.sent))
    error = next(m for m in ws.sent if m["type"] == "error")
    assert error["kind"] == "rate_limited"
    assert connection.audio_budget.used <= connection.audio_budget.limit
    assert connection.audio_budget.used == service.audio_budget.used == 0
    ws.feed_disconnect()
    await asyncio.wait_for(runner, 5)
    assert json.dumps(ws.sent)  # every message was serialisable


def test_the_schema_documents_context_and_metadata_limits() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    path = Path(__file__).resolve().parents[1] / "docs" / "realtime.schema.json"
    validator = jsonschema.Draft202012Validator(json.loads(path.read_text()))
    context = {"type": "session.update", "session": {"sarsteer_context": {"channel": "kids"}}}
    assert validator.is_valid(context)
    nested = {"type": "session.update", "session": {"sarsteer_context": {"x": {"y": 1}}}}
    assert not validator.is_valid(nested)
    spoof = {"type": "response.create", "response": {"metadata": {"sarsteer_refused": "no"}}}
    assert not validator.is_valid(spoof)
    assert validator.is_valid({"type": "response.create", "response": {"metadata": {"k": "v"}}})


async def test_transcription_settings_are_checked_before_they_are_echoed(
    open_session: Session,
) -> None:
    s = open_session
    bad = '{"type":"session.update","session":{"input_audio_transcription":{"model":"w' + LONE
    error = await s.ask(bad + '"}}}', "error")
    assert error["error"]["code"] == "invalid_value"
    raw = '{"type":"session.update","session":{"input_audio_transcription":'
    updated = await s.ask(raw + '{"model":"whisper-1","x":NaN}}}', "session.updated")
    assert updated["session"]["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    await s.still_serving()
