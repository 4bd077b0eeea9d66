"""Turns always end: cancel right after end, barge-in through RemoteGuard (issue 10 item 7)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from typing import Any

import numpy as np
import pytest
from _server_fakes import FakeSocket, finals_by_turn

from sarsteer_guard.guard.events import TurnDecision
from sarsteer_guard.remote import RemoteGuard
from sarsteer_guard.server import metrics
from sarsteer_guard.server.connection import TurnConnection
from sarsteer_guard.server.protocol import encode_audio_frame
from sarsteer_guard.server.service import GuardService
from sarsteer_guard.server.settings import ServerSettings
from sarsteer_guard.server.testing import serve_in_thread
from sarsteer_guard.testing.scripted import ScriptedGuard

PCM = b"\x00\x01" * 1600  # 0.1 s at 16 kHz int16: the shortest clip accepted


async def _service(guard: ScriptedGuard, **settings: Any) -> GuardService:
    service = GuardService(guard, ServerSettings(rate_limit_per_s=0, **settings))
    await guard.start()
    service.started = True
    return service


@pytest.mark.slow
async def test_10000_end_cancel_pairs_leak_no_turn() -> None:
    """cancel lands before the turn task's first step: still one final, the slot comes back."""
    guard = ScriptedGuard(reply="a b", delay_s=0.0)
    service = await _service(guard, max_open_turns=64)
    ws = FakeSocket()
    connection = TurnConnection(ws, service)  # type: ignore[arg-type]
    gauge_before = metrics.OPEN_TURNS._value.get()
    runner = asyncio.get_running_loop().create_task(connection.run())
    pairs = 10_000
    for i in range(pairs):
        turn_id = f"t{i}"
        ws.feed_text({"type": "turn.start", "turn_id": turn_id})
        ws.feed_bytes(encode_audio_frame(turn_id, PCM))
        ws.feed_text({"type": "turn.end", "turn_id": turn_id})
        ws.feed_text({"type": "turn.cancel", "turn_id": turn_id})
        await ws.wait_for(lambda: ws.inbox.empty())  # the connection took the whole pair
    await ws.wait_for(lambda: len(finals_by_turn(ws.sent)) >= pairs, timeout_s=120)
    await asyncio.sleep(0.05)
    finals = finals_by_turn(ws.sent)
    assert len(finals) == pairs
    assert all(len(kinds) == 1 for kinds in finals.values())
    assert Counter(k[0] for k in finals.values()) == {"cancelled": pairs}
    assert connection.open_turns == 0
    assert not connection.running
    assert metrics.OPEN_TURNS._value.get() == gauge_before
    ws.feed_disconnect()
    await asyncio.wait_for(runner, 10)


async def test_cancel_before_first_step_of_disconnect_and_shutdown() -> None:
    """The same early cancel by a drain still sends shutting_down and closes the turn."""
    guard = ScriptedGuard(reply="a b c", delay_s=0.01)
    service = await _service(guard)
    ws = FakeSocket()
    connection = TurnConnection(ws, service)  # type: ignore[arg-type]
    runner = asyncio.get_running_loop().create_task(connection.run())
    await ws.wait_for(lambda: bool(ws.sent))
    await connection._on_start(_start("s1"))
    await connection._handle(encode_audio_frame("s1", PCM))
    await connection._on_end("s1")
    await connection.shutdown()  # cancels before the task's first step
    finals = finals_by_turn(ws.sent)
    assert finals["s1"] == ["error:shutting_down"]
    assert connection.open_turns == 0
    ws.feed_disconnect()
    await asyncio.wait_for(runner, 10)


async def test_pipelined_barge_ins_do_not_fill_the_turn_limit() -> None:
    """Cancelled turns still closing when the next turn.start is read: it is admitted.

    Everything is fed before the connection reads, so all of it arrives in one burst (the
    receive never yields to the turns' tasks). With a limit of 4, the fifth start finds four
    cancelled turns still in ``running``; without waiting for them, that start and every one
    after it, ``fence`` included, was refused ``rate_limited``. CI once refused a real
    client's turn like this.
    """
    guard = ScriptedGuard(reply="a b", delay_s=0.0)
    service = await _service(guard, max_open_turns=4)
    ws = FakeSocket()
    connection = TurnConnection(ws, service)  # type: ignore[arg-type]
    for turn_id in [f"c{i}" for i in range(12)] + ["fence"]:
        ws.feed_text({"type": "turn.start", "turn_id": turn_id})
        ws.feed_bytes(encode_audio_frame(turn_id, PCM))
        ws.feed_text({"type": "turn.end", "turn_id": turn_id})
        if turn_id != "fence":
            ws.feed_text({"type": "turn.cancel", "turn_id": turn_id})
    runner = asyncio.get_running_loop().create_task(connection.run())
    await ws.wait_for(lambda: len(finals_by_turn(ws.sent)) == 13)
    finals = finals_by_turn(ws.sent)
    assert finals.pop("fence") == ["decision"]
    assert finals == {f"c{i}": ["cancelled"] for i in range(12)}
    assert connection.open_turns == 0
    ws.feed_disconnect()
    await asyncio.wait_for(runner, 10)


def _start(turn_id: str) -> Any:
    from sarsteer_guard.server.protocol import parse_turn_start

    return parse_turn_start({"type": "turn.start", "turn_id": turn_id})


async def test_remote_guard_barge_in_right_after_turn_sent_leaks_nothing() -> None:
    """70 barge-ins the instant turn.end is sent (the trial leaked 20 of 70)."""
    guard = ScriptedGuard(reply="w " * 20, delay_s=0.005)
    settings = ServerSettings(rate_limit_per_s=0, max_open_turns=32)
    with serve_in_thread(guard, settings) as server:
        remote = RemoteGuard(server.url)
        await remote.start()
        try:
            audio = np.zeros(1600, dtype=np.int16)
            sent = asyncio.Event()
            remote.on_turn_sent = lambda _turn_id: sent.set()
            for i in range(70):
                sent.clear()
                events = remote.respond(_turn(audio, f"b{i}"))
                waiting = asyncio.get_running_loop().create_task(anext(events))
                await sent.wait()  # turn.end is on the wire: barge in now
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await waiting
                await events.aclose()
            # One whole turn: the server has read every barge-in before it (one socket, in order).
            assert isinstance(await _final(remote, "fence", audio), TurnDecision)
            await _eventually(lambda: server.service.open_turns() == 0)
            # Every slot came back: turns in parallel still run.
            results = await asyncio.gather(*(_final(remote, f"after{i}", audio) for i in range(8)))
            assert [r for r in results if not isinstance(r, TurnDecision)] == []
        finally:
            await remote.close()


async def _eventually(check: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


def _turn(audio: Any, turn_id: str) -> Any:
    from sarsteer_guard.guard.events import Turn

    return Turn(audio=audio, session_id="call", turn_id=turn_id)


async def _final(remote: RemoteGuard, turn_id: str, audio: Any) -> Any:
    last = None
    async for event in remote.respond(_turn(audio, turn_id)):
        last = event
    return last


def test_fake_socket_is_json() -> None:
    ws = FakeSocket()
    ws.feed_text({"type": "x"})
    assert json.loads(ws.inbox.get_nowait()["text"]) == {"type": "x"}
