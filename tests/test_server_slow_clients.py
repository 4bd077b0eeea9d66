"""Clients that stop reading cannot pin turns, connections or the drain (issue 10 item 8)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import pytest
from _server_fakes import FakeSocket
from test_server_shutdown import serve_process
from websockets.asyncio.client import connect

from sarsteer_guard.server.connection import TurnConnection
from sarsteer_guard.server.protocol import encode_audio_frame
from sarsteer_guard.server.service import GuardService
from sarsteer_guard.server.settings import ServerSettings
from sarsteer_guard.server.testing import serve_in_thread
from sarsteer_guard.testing.scripted import ScriptedGuard

PCM = b"\x00\x01" * 1600  # 0.1 s at 16 kHz int16: the shortest clip accepted


async def _eventually(check: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def _open_turn(ws: FakeSocket, turn_id: str) -> None:
    ws.feed_text({"type": "turn.start", "turn_id": turn_id})
    ws.feed_bytes(encode_audio_frame(turn_id, PCM))
    ws.feed_text({"type": "turn.end", "turn_id": turn_id})


async def test_a_send_past_its_deadline_cuts_the_connection_and_frees_its_turns() -> None:
    guard = ScriptedGuard(reply=" ".join(["word"] * 50), delay_s=0.01)
    await guard.start()
    settings = ServerSettings(rate_limit_per_s=0, send_timeout_s=0.2, turn_timeout_s=60)
    service = GuardService(guard, settings)
    service.started = True
    ws = FakeSocket()
    connection = TurnConnection(ws, service)  # type: ignore[arg-type]
    runner = asyncio.get_running_loop().create_task(connection.run())
    await _open_turn(ws, "a")
    ws.feed_text({"type": "turn.start", "turn_id": "b"})  # still collecting audio
    await ws.wait_for(lambda: any(m["type"] == "delta" for m in ws.sent))
    ws.block_sends = True  # the client stops reading mid-turn
    await asyncio.wait_for(runner, 5)  # run() returns: the connection is cut
    assert connection.open_turns == 0
    assert service.open_turns() == 0
    assert connection not in service.connections
    assert "a" in guard.cancelled  # the guard stopped generating for it


async def test_drain_ends_at_its_deadline_whatever_the_clients_do() -> None:
    guard = ScriptedGuard(reply=" ".join(["word"] * 500), delay_s=0.01)
    await guard.start()
    settings = ServerSettings(rate_limit_per_s=0, send_timeout_s=30, shutdown_grace_s=0.3)
    service = GuardService(guard, settings)
    service.started = True
    ws = FakeSocket()
    connection = TurnConnection(ws, service)  # type: ignore[arg-type]
    runner = asyncio.get_running_loop().create_task(connection.run())
    await _open_turn(ws, "a")
    await ws.wait_for(lambda: any(m["type"] == "delta" for m in ws.sent))
    ws.block_sends = True
    began = time.monotonic()
    await asyncio.wait_for(service.drain(), 10)
    assert time.monotonic() - began < 0.3 + 1.5  # grace + the fixed close allowance
    await asyncio.wait_for(runner, 5)
    assert service.open_turns() == 0


async def test_a_real_client_that_never_reads_is_disconnected() -> None:
    """Over TCP: the server's writes back up, the send deadline cuts the connection."""
    word = "x" * 8000
    guard = ScriptedGuard(reply=" ".join([word] * 2000), delay_s=0.0)
    settings = ServerSettings(rate_limit_per_s=0, send_timeout_s=0.5, turn_timeout_s=120)
    with serve_in_thread(guard, settings) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.settings.port))
        async with connect(
            server.url, sock=sock, compression=None, max_queue=1, close_timeout=0.2
        ) as ws:
            json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "turn.start", "turn_id": "big"}))
            await ws.send(encode_audio_frame("big", PCM))
            await ws.send(json.dumps({"type": "turn.end", "turn_id": "big"}))
            # Never read again: the server must give up on us and free the turn.
            await _eventually(lambda: not server.service.connections, timeout_s=30)
            assert server.service.open_turns() == 0
            assert "big" in guard.cancelled


@pytest.mark.slow
async def test_sigterm_drain_ends_on_time_with_a_client_that_never_reads() -> None:
    """A real serve process: the drain cuts a non-reading client instead of waiting on it."""
    reply = " ".join(["x" * 100] * 1000)  # about 100 KB of deltas per turn
    args = ("--scripted-delay-s", "0", "--scripted-reply", reply, "--rate-limit", "0")
    limits = ("--shutdown-grace-s", "1", "--send-timeout-s", "60")  # only the drain can cut it
    with serve_process(*args, *limits) as (proc, url):
        port = int(url.split(":")[2].split("/")[0])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        async with connect(url, sock=sock, compression=None, max_queue=1, close_timeout=0.2) as ws:
            json.loads(await ws.recv())

            async def send_turns() -> None:  # 20 MB of replies: more than any socket buffer
                for i in range(200):
                    await ws.send(json.dumps({"type": "turn.start", "turn_id": f"t{i}"}))
                    await ws.send(encode_audio_frame(f"t{i}", PCM))
                    await ws.send(json.dumps({"type": "turn.end", "turn_id": f"t{i}"}))

            sender = asyncio.get_running_loop().create_task(send_turns())
            await asyncio.sleep(3)  # the server's writes back up: we never read
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 20)
            elapsed = time.monotonic() - began
            sender.cancel()
        assert code == 0
        # grace 1 s + 1 s for final messages + uvicorn's own 5 s shutdown allowance
        assert elapsed < 12, elapsed
