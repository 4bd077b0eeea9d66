"""Review fixes: browser Origin check, private default sessions, session cleanup, token cap."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from sarsteer_guard.cli import serve as serve_cli
from sarsteer_guard.guard.conversation import ConversationStore
from sarsteer_guard.server.protocol import encode_audio_frame, parse_turn_start
from sarsteer_guard.server.settings import (
    ALLOWED_ORIGINS_ENV,
    ServerConfigError,
    ServerSettings,
    TokenSet,
    load_allowed_origins,
    normalize_origin,
)
from sarsteer_guard.server.testing import ServerThread, serve_in_thread
from sarsteer_guard.testing.scripted import ScriptedGuard

PCM = bytes(3200)  # 0.1 s at 16 kHz int16: the shortest clip accepted
WORKER = "w" * 24 + "-worker"


async def handshake_status(
    url: str, origin: str | None, headers: dict[str, str] | None = None
) -> int:
    try:
        async with connect(
            url, origin=None if origin is None else Origin(origin), additional_headers=headers
        ) as ws:
            await ws.recv()
            return 101
    except InvalidStatus as error:
        return error.response.status_code


async def recv(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return message


async def run_turn(ws: ClientConnection, turn_id: str, **extra: Any) -> dict[str, Any]:
    """One turn; returns its final message."""
    await ws.send(json.dumps({"type": "turn.start", "turn_id": turn_id, **extra}))
    await ws.send(encode_audio_frame(turn_id, PCM))
    await ws.send(json.dumps({"type": "turn.end", "turn_id": turn_id}))
    while True:
        message = await recv(ws)
        if message.get("turn_id") == turn_id and message["type"] in ("decision", "error"):
            return message


# -- 1. cross-site WebSocket hijacking --------------------------------------------------------
@pytest.fixture
def loopback_open() -> Iterator[ServerThread]:
    """The risky default: loopback, no token."""
    settings = ServerSettings(allowed_origins=("https://Console.Example:443/",))
    with serve_in_thread(ScriptedGuard(delay_s=0), settings) as server:
        yield server


async def test_web_pages_cannot_open_the_unauthenticated_socket(
    loopback_open: ServerThread,
) -> None:
    url = loopback_open.url
    assert await handshake_status(url, "https://evil.example") == 403
    assert await handshake_status(url, "http://127.0.0.1:8765") == 403  # DNS rebinding, too
    assert await handshake_status(url, "null") == 403  # sandboxed iframes, file:// pages
    assert await handshake_status(url, "https://console.example.evil.example") == 403
    assert await handshake_status(url, "http://console.example") == 403  # scheme matters


async def test_allowed_origins_and_non_browser_clients_connect(
    loopback_open: ServerThread,
) -> None:
    url = loopback_open.url
    assert await handshake_status(url, None) == 101  # RemoteGuard and friends send no Origin
    assert await handshake_status(url, "https://console.example") == 101
    assert await handshake_status(url, "HTTPS://CONSOLE.EXAMPLE:443") == 101


async def test_origin_is_checked_before_the_token() -> None:
    settings = ServerSettings(tokens=TokenSet.from_tokens([WORKER]))
    with serve_in_thread(ScriptedGuard(delay_s=0), settings) as server:
        auth = {"Authorization": f"Bearer {WORKER}"}
        assert await handshake_status(server.url, "https://evil.example", auth) == 403
        assert await handshake_status(server.url, None, auth) == 101


def test_origin_normalisation_and_config_errors() -> None:
    assert normalize_origin(" HTTP://LocalHost:80/ ") == "http://localhost"
    assert normalize_origin("http://localhost:3000") == "http://localhost:3000"
    assert normalize_origin("https://[::1]:8443") == "https://[::1]:8443"
    for bad in ("*", "null", "https://x.example/app", "https://*.example", "x.example", ""):
        with pytest.raises(ServerConfigError, match="not a web origin"):
            normalize_origin(bad)
    with pytest.raises(ServerConfigError):
        ServerSettings(allowed_origins=("https://ok.example/path",))


def test_allowed_origins_from_flags_and_environment() -> None:
    env = {ALLOWED_ORIGINS_ENV: "http://localhost:3000, https://b.example ,"}
    assert load_allowed_origins(["https://A.example", "https://b.example:443"], env) == (
        "https://a.example",
        "https://b.example",
        "http://localhost:3000",
    )
    assert load_allowed_origins([], {}) == ()


def _serve_args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers())
    return parser.parse_args(["serve", "--scripted", *extra])


def test_serve_cli_builds_the_new_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServerSettings] = []

    def fake_run_server(app: Any, settings: ServerSettings, sock: socket.socket) -> int:
        sock.close()  # bound by serve before the guard is built (issue 10 item 19)
        seen.append(settings)
        return 0

    monkeypatch.setattr("sarsteer_guard.server.runner.run_server", fake_run_server)
    monkeypatch.setenv(ALLOWED_ORIGINS_ENV, "https://env.example")
    args = _serve_args(
        "--allow-origin", "https://a.example", "--allow-origin", "http://localhost:3000",
        "--max-new-tokens-cap", "128",
    )  # fmt: skip
    assert serve_cli.run(args) == 0
    assert seen[0].allowed_origins == (
        "https://a.example",
        "http://localhost:3000",
        "https://env.example",
    )
    assert seen[0].max_new_tokens_cap == 128
    monkeypatch.delenv(ALLOWED_ORIGINS_ENV)
    assert serve_cli.run(_serve_args()) == 0
    assert seen[1].allowed_origins == ()
    assert seen[1].max_new_tokens_cap == 512


# -- 2. and 3. private default sessions, forgotten on close --------------------------------------
@dataclass
class RecordingConversations:
    """Stands in for the Guard's ConversationStore, recording what the server forgets."""

    forgotten: list[str] = field(default_factory=list)

    def forget(self, session_id: str) -> None:
        self.forgotten.append(session_id)


@dataclass
class GuardWithHistory(ScriptedGuard):
    """Keeps history like the Guard does: ``forget_session`` drops it from ``conversations``."""

    conversations: Any = field(default_factory=RecordingConversations)

    def forget_session(self, session_id: str) -> None:
        self.conversations.forget(session_id)


def test_protocol_never_defaults_to_a_shared_session() -> None:
    a = parse_turn_start({"type": "turn.start", "turn_id": "a"})
    b = parse_turn_start({"type": "turn.start", "turn_id": "b"})
    assert a.session_id != "default"
    assert a.session_id != b.session_id
    given = parse_turn_start({"type": "turn.start", "turn_id": "c"}, default_session_id="conn-1")
    assert given.session_id == "conn-1"
    named = parse_turn_start(
        {"type": "turn.start", "turn_id": "d", "session_id": "call-9"}, default_session_id="x"
    )
    assert named.session_id == "call-9"


async def test_omitted_session_id_is_private_to_the_connection() -> None:
    guard = ScriptedGuard(delay_s=0)
    with serve_in_thread(guard, ServerSettings(rate_limit_per_s=0)) as server:
        async with connect(server.url) as one, connect(server.url) as two:
            await recv(one)
            await recv(two)
            first = await run_turn(one, "a1")
            again = await run_turn(one, "a2")
            other = await run_turn(two, "b1")
            named = await run_turn(two, "b2", session_id="call-1")
    assert first["session_id"] == again["session_id"]  # one conversation per connection
    assert first["session_id"] != other["session_id"]  # never shared between clients
    assert "default" not in {first["session_id"], other["session_id"]}
    assert named["session_id"] == "call-1"
    assert [t.session_id for t in guard.turns] == [
        first["session_id"],
        first["session_id"],
        other["session_id"],
        "call-1",
    ]


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_closing_the_connection_forgets_its_default_session() -> None:
    guard = GuardWithHistory(delay_s=0)
    with serve_in_thread(guard, ServerSettings(rate_limit_per_s=0)) as server:
        async with connect(server.url) as ws:
            await recv(ws)
            anon = (await run_turn(ws, "t1"))["session_id"]
            await run_turn(ws, "t2", session_id="call-7")
            assert guard.conversations.forgotten == []  # not while the connection lives
        await wait_for(lambda: guard.conversations.forgotten)
        # The client-named session may continue on a reconnect: it is kept.
        assert guard.conversations.forgotten == [anon]
        # A connection that only used named sessions forgets nothing.
        async with connect(server.url) as ws:
            await recv(ws)
            await run_turn(ws, "t3", session_id="call-7")
        await asyncio.sleep(0.2)
        assert guard.conversations.forgotten == [anon]


async def test_forget_drops_history_from_a_real_conversation_store() -> None:
    store = ConversationStore()
    guard = GuardWithHistory(delay_s=0, conversations=store)
    with serve_in_thread(guard, ServerSettings()) as server:
        async with connect(server.url) as ws:
            await recv(ws)
            anon = (await run_turn(ws, "t1"))["session_id"]
            audio = np.zeros(160, dtype=np.float32)
            store.append(anon, audio, 16000, "the reply")  # what the Guard records
            store.append("call-1", audio, 16000, "kept")
            assert len(store) == 2
        await wait_for(lambda: len(store) == 1)
        assert store.history(anon) == []
        assert store.history("call-1") != []


async def test_guards_without_conversations_still_close_cleanly() -> None:
    guard = ScriptedGuard(delay_s=0)
    assert not hasattr(guard, "conversations")
    with serve_in_thread(guard) as server:
        for _ in range(2):
            async with connect(server.url) as ws:
                await recv(ws)
                assert (await run_turn(ws, "t"))["type"] == "decision"
        await wait_for(lambda: not server.service.connections)


# -- 4. max_new_tokens cap -------------------------------------------------------------------
async def test_max_new_tokens_is_clamped_to_the_cap() -> None:
    guard = ScriptedGuard(delay_s=0)
    settings = ServerSettings(max_new_tokens_cap=100, rate_limit_per_s=0)
    with serve_in_thread(guard, settings) as server:
        async with connect(server.url) as ws:
            hello = await recv(ws)
            assert hello["limits"]["max_new_tokens"] == 100
            for turn_id, asked in (("big", 4096), ("edge", 101), ("small", 50), ("at", 100)):
                final = await run_turn(ws, turn_id, max_new_tokens=asked)
                assert final["type"] == "decision"  # clamped, not refused
            assert (await run_turn(ws, "none"))["type"] == "decision"
    assert [t.max_new_tokens for t in guard.turns] == [100, 100, 50, 100, None]


async def test_default_cap_is_512() -> None:
    guard = ScriptedGuard(delay_s=0)
    with serve_in_thread(guard) as server:
        async with connect(server.url) as ws:
            assert (await recv(ws))["limits"]["max_new_tokens"] == 512
            await run_turn(ws, "t", max_new_tokens=4096)
    assert guard.turns[0].max_new_tokens == 512


@pytest.mark.parametrize("cap", [0, 4097])
def test_cap_out_of_range_is_a_config_error(cap: int) -> None:
    with pytest.raises(ServerConfigError, match="--max-new-tokens-cap"):
        ServerSettings(max_new_tokens_cap=cap).check()
