"""Protocol faults and string hygiene at the server's edge (issue 10 items 10 and A)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from _server_fakes import FakeSocket, finals_by_turn
from websockets.asyncio.client import connect

from sarsteer_guard.guard.events import Turn, TurnDecision, TurnError
from sarsteer_guard.remote import RemoteGuard
from sarsteer_guard.server.connection import TurnConnection
from sarsteer_guard.server.protocol import (
    ProtocolError,
    TurnStartMsg,
    encode_audio_frame,
    parse_message,
)
from sarsteer_guard.server.service import GuardService
from sarsteer_guard.server.settings import ServerSettings
from sarsteer_guard.server.testing import serve_in_thread
from sarsteer_guard.server.validation import clean_text, json_depth
from sarsteer_guard.testing.scripted import ScriptedGuard

PCM = b"\x00\x01" * 1600  # 0.1 s at 16 kHz int16: the shortest clip accepted


# -- the parser never raises anything but ProtocolError ----------------------------------------
@pytest.mark.parametrize("turn_id", ["t1\n", "t1\r\n", "\nt1"])
def test_turn_id_with_newline_is_refused(turn_id: str) -> None:
    with pytest.raises(ProtocolError, match="turn_id must be"):
        parse_message(json.dumps({"type": "turn.end", "turn_id": turn_id}))
    with pytest.raises(ProtocolError, match="header is invalid"):
        parse_message(bytes((len(turn_id),)) + turn_id.encode() + PCM)


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"type": "turn.start", "turn_id": "a", "context": {"x": ' + "[" * 5000 + "]" * 5000 + "}}",
        '{"type": "turn.start", "turn_id": "a", "sample_rate": ' + "9" * 5000 + "}",
        '{"type": "turn.start", "turn_id": "a", "context": {"n": -' + "1" * 40 + "}}",
    ],
    ids=["deep", "deep-in-context", "5000-digits", "40-digits"],
)
def test_hostile_json_is_a_protocol_error(frame: str) -> None:
    with pytest.raises(ProtocolError, match="refused JSON"):
        parse_message(frame, max_bytes=1 << 20)


def test_depth_scan_ignores_brackets_in_strings() -> None:
    text = json.dumps({"type": "turn.start", "turn_id": "a", "context": {"note": "[[[{{{" * 50}})
    assert json_depth(text) == 2
    message = parse_message(text)
    assert isinstance(message, TurnStartMsg)
    assert message.context["note"] == "[[[{{{" * 50


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_context_values_are_refused(value: str) -> None:
    frame = '{"type": "turn.start", "turn_id": "nan1", "context": {"age": ' + value + "}}"
    with pytest.raises(ProtocolError, match="finite number") as caught:
        parse_message(frame)
    assert caught.value.turn_id == "nan1"


@pytest.mark.parametrize(
    "fields",
    [
        {"session_id": "call-\ud800"},
        {"context": {"name": "x\udfff"}},
        {"context": {"\ud800key": "v"}},
        {"session_id": "call\n7"},
        {"context": {"note": "bell\x07"}},
    ],
    ids=["surrogate-session", "surrogate-value", "surrogate-key", "newline-id", "control-char"],
)
def test_unencodable_or_control_text_is_refused_at_turn_start(fields: dict[str, Any]) -> None:
    frame = json.dumps({"type": "turn.start", "turn_id": "s1", **fields})
    with pytest.raises(ProtocolError) as caught:
        parse_message(frame)
    assert caught.value.turn_id == "s1"
    assert caught.value.from_start


def test_context_text_is_normalised_to_nfc() -> None:
    frame = json.dumps({"type": "turn.start", "turn_id": "n", "context": {"cafe\u0301": "e\u0301"}})
    message = parse_message(frame)
    assert isinstance(message, TurnStartMsg)
    assert message.context == {"caf\u00e9": "\u00e9"}
    assert clean_text("line one\nline two") == "line one\nline two"  # text may hold newlines


# -- the connection: right turn ids on errors, a close frame on anything unexpected ------------
@pytest.fixture
async def conn() -> AsyncIterator[tuple[TurnConnection, FakeSocket, ScriptedGuard]]:
    guard = ScriptedGuard(reply="ok", delay_s=0.0)
    await guard.start()
    service = GuardService(guard, ServerSettings(rate_limit_per_s=0))
    service.started = True
    ws = FakeSocket()
    connection = TurnConnection(ws, service)  # type: ignore[arg-type]
    runner = asyncio.get_running_loop().create_task(connection.run())
    yield connection, ws, guard
    ws.feed_disconnect()
    await asyncio.wait_for(runner, 10)


async def test_second_invalid_start_on_a_rejected_id_echoes_the_turn_id(
    conn: tuple[TurnConnection, FakeSocket, ScriptedGuard],
) -> None:
    _connection, ws, _ = conn
    for _ in range(2):
        ws.feed_text({"type": "turn.start", "turn_id": "r1", "channels": 7})
    await ws.wait_for(lambda: len(finals_by_turn(ws.sent).get("r1", [])) == 2)
    errors = [m for m in ws.sent if m["type"] == "error"]
    assert [m["turn_id"] for m in errors] == ["r1", "r1"]
    # A valid start on the same id then runs normally.
    ws.feed_text({"type": "turn.start", "turn_id": "r1"})
    ws.feed_bytes(encode_audio_frame("r1", PCM))
    ws.feed_text({"type": "turn.end", "turn_id": "r1"})
    await ws.wait_for(lambda: "decision" in finals_by_turn(ws.sent)["r1"])


async def test_invalid_start_for_an_open_turn_does_not_end_it(
    conn: tuple[TurnConnection, FakeSocket, ScriptedGuard],
) -> None:
    connection, ws, _ = conn
    ws.feed_text({"type": "turn.start", "turn_id": "o1"})
    ws.feed_text({"type": "turn.start", "turn_id": "o1", "channels": 7})
    await ws.wait_for(lambda: any(m["type"] == "error" for m in ws.sent))
    assert [m["turn_id"] for m in ws.sent if m["type"] == "error"] == [None]
    assert "o1" in connection.collecting


async def test_lone_surrogate_session_never_reaches_the_guard(
    conn: tuple[TurnConnection, FakeSocket, ScriptedGuard],
) -> None:
    _, ws, guard = conn
    ws.feed_raw('{"type": "turn.start", "turn_id": "u1", "session_id": "a\\ud800"}')
    ws.feed_bytes(encode_audio_frame("u1", PCM))
    ws.feed_text({"type": "turn.end", "turn_id": "u1"})
    await ws.wait_for(lambda: "u1" in finals_by_turn(ws.sent))
    assert finals_by_turn(ws.sent)["u1"] == ["error:bad_request"]
    await asyncio.sleep(0.05)
    assert guard.turns == []


async def test_unexpected_failure_closes_with_1011_not_1006() -> None:
    guard = ScriptedGuard(reply="ok", delay_s=0.0)
    with serve_in_thread(guard, ServerSettings(rate_limit_per_s=0)) as server:
        async with connect(server.url, compression=None) as ws:
            json.loads(await ws.recv())
            # Hostile frames first: each is answered, the socket stays open.
            await ws.send("[" * 50_000 + "]" * 50_000)
            await ws.send('{"type": "turn.end", "turn_id": "a", "n": ' + "7" * 5000 + "}")
            for _ in range(2):
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert reply["type"] == "error"
                assert reply["turn_id"] is None
            await ws.send(json.dumps({"type": "turn.start", "turn_id": "ok1"}))
            await ws.send(encode_audio_frame("ok1", PCM))
            await ws.send(json.dumps({"type": "turn.end", "turn_id": "ok1"}))
            while (reply := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] == "delta":
                pass
            assert reply["type"] == "decision"


async def test_remote_guard_refuses_nan_context_as_a_turn_error() -> None:
    guard = ScriptedGuard(reply="ok", delay_s=0.0)
    with serve_in_thread(guard, ServerSettings(rate_limit_per_s=0)) as server:
        async with RemoteGuard(server.url) as remote:
            turn = Turn(
                audio=np.zeros(1600, dtype=np.int16),
                context={"score": float("nan")},
                turn_id="nan",
            )
            events = [e async for e in remote.respond(turn)]
            assert len(events) == 1
            assert isinstance(events[0], TurnError)
            assert events[0].kind == "bad_request"
            ok = Turn(audio=np.zeros(1600, dtype=np.int16), turn_id="fine")
            assert isinstance([e async for e in remote.respond(ok)][-1], TurnDecision)


async def test_clip_under_a_tenth_of_a_second_is_refused_before_the_guard() -> None:
    """Issue 10 item 11 at the server: the documented minimum, one final error, slot freed."""
    guard = ScriptedGuard(reply="ok", delay_s=0.0)
    with serve_in_thread(guard, ServerSettings(rate_limit_per_s=0)) as server:
        async with RemoteGuard(server.url) as remote:
            short = Turn(audio=np.zeros(480, dtype=np.int16), turn_id="short")  # 30 ms
            events = [e async for e in remote.respond(short)]
            assert len(events) == 1
            assert isinstance(events[0], TurnError)
            assert "send at least 0.1 s of speech" in events[0].message
            ok = Turn(audio=np.zeros(1600, dtype=np.int16), turn_id="tenth")
            assert isinstance([e async for e in remote.respond(ok)][-1], TurnDecision)
    assert [t.turn_id for t in guard.turns] == ["tenth"]
