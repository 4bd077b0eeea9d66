"""SIGTERM drains a real ``sarsteer-guard serve`` process (ScriptedGuard, test-only flag)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from sarsteer_guard.server.protocol import encode_audio_frame
from sarsteer_guard.server.testing import free_port


@contextmanager
def serve_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SARSTEER_GUARD_")}
    env["SARSTEER_LOG_JSON"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sarsteer_guard", "serve", "--scripted", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_listening(port, proc)
        yield proc, f"ws://127.0.0.1:{port}/v1/turns"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def wait_listening(port: int, proc: subprocess.Popen[str]) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("server did not listen")


async def recv(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 15))
    return message


async def begin_turn(ws: ClientConnection, turn_id: str) -> None:
    await ws.send(json.dumps({"type": "turn.start", "turn_id": turn_id}))
    await ws.send(encode_audio_frame(turn_id, b"\x00" * 3200))
    await ws.send(json.dumps({"type": "turn.end", "turn_id": turn_id}))


def logged_events(output: str) -> list[str]:
    events = []
    for line in output.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line).get("event", ""))
    return events


async def test_sigterm_lets_in_flight_turns_finish() -> None:
    reply = " ".join(f"w{i}" for i in range(12))  # 12 words x 0.1 s: about 1.2 s
    with serve_process(
        "--scripted-delay-s", "0.1", "--scripted-reply", reply, "--shutdown-grace-s", "10"
    ) as (proc, url):
        async with connect(url) as ws:
            await recv(ws)  # hello
            await begin_turn(ws, "inflight")
            assert (await recv(ws))["type"] == "delta"
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            await ws.send(json.dumps({"type": "turn.start", "turn_id": "late"}))
            texts, final, late = [], None, None
            while final is None or late is None:
                message = await recv(ws)
                if message.get("turn_id") == "late":
                    late = message
                elif message["type"] == "delta":
                    texts.append(message["text"])
                else:
                    final = message
            assert late["kind"] == "shutting_down"
            assert final["type"] == "decision"
            assert final["text"] == reply
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
        assert proc.wait(timeout=15) == 0
        output = proc.stdout.read() if proc.stdout else ""
    events = logged_events(output)
    assert events.index("server.draining") < events.index("server.drained")
    assert events.index("server.drained") < events.index("server.guard_closed")


async def test_sigterm_cancels_turns_at_the_grace_deadline() -> None:
    reply = " ".join(["long"] * 200)  # 200 x 0.05 s = 10 s: longer than the grace
    with serve_process(
        "--scripted-delay-s", "0.05", "--scripted-reply", reply, "--shutdown-grace-s", "0.5"
    ) as (proc, url):
        async with connect(url) as ws:
            await recv(ws)
            await begin_turn(ws, "slow")
            assert (await recv(ws))["type"] == "delta"
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            while True:
                message = await recv(ws)
                if message["type"] != "delta":
                    break
            assert message["type"] == "error"
            assert message["kind"] == "shutting_down"
            assert "retry" in message["message"]
            assert time.monotonic() - started < 5
        assert proc.wait(timeout=15) == 0
        output = proc.stdout.read() if proc.stdout else ""
    events = logged_events(output)
    assert "server.drain_deadline" in events
    assert "server.guard_closed" in events


def test_guard_start_failure_exits_non_zero() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SARSTEER_GUARD_")}
    env["SARSTEER_LOG_JSON"] = "1"
    serve = [sys.executable, "-m", "sarsteer_guard", "serve", "--port", str(free_port())]
    result = subprocess.run(
        [*serve, "--model", "/nonexistent/model"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1  # so an orchestrator restarts the container
    events = logged_events(result.stderr)
    assert "server.guard_start_failed" in events
    assert "server.guard_closed" in events
