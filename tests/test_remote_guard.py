"""RemoteGuard: the SpeechGuard protocol over a real server, cancellation, reconnects."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncGenerator
from typing import cast

import numpy as np
import pytest

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.guard.events import (
    GuardEvent,
    SpeechGuard,
    TextDelta,
    Turn,
    TurnDecision,
    TurnError,
)
from sarsteer_guard.remote import RemoteAuthError, RemoteGuard, RemoteGuardError
from sarsteer_guard.server.settings import ServerSettings, TokenSet
from sarsteer_guard.server.testing import ServerThread, free_port, serve_in_thread
from sarsteer_guard.testing.scripted import ScriptedGuard

TOKEN = "t" * 32


def tone(seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(16000 * seconds), dtype=np.float32) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def collect(guard: SpeechGuard, turn: Turn) -> list[GuardEvent]:
    return [event async for event in guard.respond(turn)]


async def test_remote_events_equal_in_process_events() -> None:
    local = ScriptedGuard(reply="alpha beta gamma", delay_s=0.0)
    served = ScriptedGuard(reply="alpha beta gamma", delay_s=0.0)
    turn = Turn(audio=tone(), session_id="s1", context={"tier": "adult"}, max_new_tokens=9)
    expected = await collect(local, turn)
    with serve_in_thread(served) as server:
        async with RemoteGuard(server.url) as remote:
            assert isinstance(remote, SpeechGuard)
            assert remote.ready
            got = await collect(remote, turn)
    assert got == expected
    assert isinstance(got[-1], TurnDecision)
    sent = served.turns[0]
    assert sent.audio == float_to_pcm16(tone())  # float arrays travel as int16 PCM
    assert (sent.sample_format, sent.session_id, sent.max_new_tokens) == ("int16", "s1", 9)
    assert dict(sent.context) == {"tier": "adult"}


async def test_bytes_audio_is_sent_as_is_in_small_frames() -> None:
    served = ScriptedGuard(delay_s=0.0)
    pcm = os.urandom(4 * 16000)  # 1 s float32
    with serve_in_thread(served, ServerSettings(max_message_bytes=4096)) as server:
        async with RemoteGuard(server.url) as remote:
            events = await collect(remote, Turn(audio=pcm, sample_format="float32"))
    assert isinstance(events[-1], TurnDecision)
    assert served.turns[0].audio == pcm
    assert served.turns[0].sample_format == "float32"


async def test_closing_the_iterator_cancels_the_turn_on_the_server() -> None:
    served = ScriptedGuard(reply=" ".join(["word"] * 300), delay_s=0.02)
    with serve_in_thread(served) as server:
        async with RemoteGuard(server.url) as remote:
            events = cast(
                AsyncGenerator[GuardEvent, None],
                remote.respond(Turn(audio=tone(), turn_id="barge")),
            )
            first = await anext(events)
            assert isinstance(first, TextDelta)
            await events.aclose()  # barge-in
            for _ in range(200):
                if served.cancelled:
                    break
                await asyncio.sleep(0.02)
            assert served.cancelled == ["barge"]
            # the connection is still good for the next turn
            served.reply, served.delay_s = "short", 0.0
            after = await collect(remote, Turn(audio=tone()))
            assert isinstance(after[-1], TurnDecision)


async def test_concurrent_turns_share_one_connection() -> None:
    served = ScriptedGuard(reply="a b c d", delay_s=0.01)
    with serve_in_thread(served) as server:
        async with RemoteGuard(server.url) as remote:
            results = await asyncio.gather(
                *(collect(remote, Turn(audio=tone(0.1), session_id=f"s{i}")) for i in range(8))
            )
            # The server closes a turn just after sending its last event: give it a moment.
            for _ in range(100):
                if server.service.open_turns() == 0:
                    break
                await asyncio.sleep(0.01)
            assert server.service.open_turns() == 0
    for events in results:
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "a b c d"
        decision = events[-1]
        assert isinstance(decision, TurnDecision)
        assert all(e.turn_id == decision.turn_id for e in events)
    assert len(served.turns) == 8


async def test_wrong_token_is_an_auth_error_without_retries() -> None:
    settings = ServerSettings(tokens=TokenSet.from_tokens([TOKEN]))
    with serve_in_thread(ScriptedGuard(), settings) as server:
        remote = RemoteGuard(server.url, token="x" * 32, max_retries=5, backoff_base_s=5)
        started = time.monotonic()
        with pytest.raises(RemoteAuthError, match="HTTP 403"):
            await remote.start()
        assert time.monotonic() - started < 3  # no backoff on a permanent error
        events = await collect(remote, Turn(audio=tone()))
        assert isinstance(events[0], TurnError)
        assert events[0].kind == "auth"
        good = RemoteGuard(server.url, token=TOKEN)
        async with good:
            assert isinstance((await collect(good, Turn(audio=tone())))[-1], TurnDecision)


async def test_token_defaults_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SARSTEER_GUARD_TOKEN", TOKEN)
    settings = ServerSettings(tokens=TokenSet.from_tokens([TOKEN]))
    with serve_in_thread(ScriptedGuard(), settings) as server:
        remote = RemoteGuard(server.url)
        assert TOKEN not in repr(remote)
        async with remote:
            assert isinstance((await collect(remote, Turn(audio=tone())))[-1], TurnDecision)


async def test_unreachable_server_yields_connection_error() -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/turns"
    remote = RemoteGuard(url, max_retries=2, backoff_base_s=0.01, connect_timeout_s=1)
    with pytest.raises(RemoteGuardError, match="after 3 attempts"):
        await remote.start()
    events = await collect(remote, Turn(audio=tone()))
    assert len(events) == 1
    assert isinstance(events[0], TurnError)
    assert events[0].kind == "connection"
    await remote.close()
    await remote.close()  # idempotent


async def test_reconnects_after_server_restart() -> None:
    settings = ServerSettings(port=free_port())
    first = ServerThread(ScriptedGuard(reply="first", delay_s=0.0), settings)
    first.start()
    remote = RemoteGuard(first.url, backoff_base_s=0.05, max_retries=20)
    try:
        await remote.start()
        assert isinstance((await collect(remote, Turn(audio=tone())))[-1], TurnDecision)
        await asyncio.to_thread(first.stop)
        for _ in range(100):  # the client notices the closed socket
            if not remote.ready:
                break
            await asyncio.sleep(0.02)
        assert not remote.ready
        second = ServerThread(ScriptedGuard(reply="second", delay_s=0.0), settings)
        restart = asyncio.get_running_loop().run_in_executor(None, second.start)
        try:
            events = await collect(remote, Turn(audio=tone()))  # retries while it starts
            await restart
            decision = events[-1]
            assert isinstance(decision, TurnDecision)
            assert decision.text == "second"
        finally:
            await asyncio.to_thread(second.stop)
    finally:
        await remote.close()


async def test_turn_in_flight_when_server_dies_gets_connection_error() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SARSTEER_GUARD_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "sarsteer_guard", "serve", "--scripted", "--port", str(port)),
        *("--scripted-delay-s", "0.05", "--scripted-reply", " ".join(["w"] * 400)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    remote = RemoteGuard(f"ws://127.0.0.1:{port}/v1/turns", max_retries=30, backoff_max_s=0.2)
    try:
        await remote.start()
        events = remote.respond(Turn(audio=tone()))
        assert isinstance(await anext(events), TextDelta)
        proc.kill()  # SIGKILL: no close frame, no drain: a crash
        rest = [event async for event in events]
        assert isinstance(rest[-1], TurnError)
        assert rest[-1].kind == "connection"
        assert "retry the turn" in rest[-1].message
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await remote.close()


def test_client_needs_no_server_stack_or_torch() -> None:
    probe = (
        "import sys, sarsteer_guard.remote; "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"  # voice workers install only websockets
