"""The Guard and its history store: network I/O off the event loop, failures cost nothing.

Review of the Redis history merge: items 1 (blocking history calls ran on the loop),
2 (a history failure lost the audit record of a served turn) and 10 (``Guard(history=)``,
closed with the guard).
"""

from __future__ import annotations

import asyncio
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.guard.conversation import ConversationStore
from sarsteer_guard.guard.core import Guard
from sarsteer_guard.guard.events import HistoryItem, Turn, TurnDecision
from sarsteer_guard.models import load_model
from sarsteer_guard.testing.audit import CapturingAuditLog

POLICY = textwrap.dedent(
    """
    name: history
    version: "1"
    model: "*"
    calibration: {k: 10, lambda: 1.0}
    defaults: {alpha: 0.0, layers: all}
    mode: enforce
    refusal: {message: null}
    audit: {record: all, keep_audio: false, retention_days: 30}
    """
)


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_model("tiny")


@pytest.fixture
def run() -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


def tone(seconds: float = 0.5, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return float_to_pcm16((0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in stream]


class NetworkLikeStore(ConversationStore):
    """A blocking store that notes whether each call ran on an event loop's thread."""

    blocking = True

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.calls: list[tuple[str, bool]] = []
        self.closed = 0
        self.forgotten = threading.Event()

    def _note(self, op: str) -> None:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        self.calls.append((op, on_loop))
        if self.fail:
            raise ValueError(f"{op}: element is not JSON")

    def history(self, session_id: str) -> list[HistoryItem]:
        self._note("history")
        return super().history(session_id)

    def append(self, session_id: str, user_audio: np.ndarray, rate: int, reply: str) -> None:
        self._note("append")
        super().append(session_id, user_audio, rate, reply)

    def forget(self, session_id: str) -> None:
        self._note("forget")
        super().forget(session_id)
        self.forgotten.set()

    def close(self) -> None:
        self.closed += 1


def guard_with(tiny: Any, tmp_path: Path, store: ConversationStore, audit: Any) -> Guard:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    return Guard(
        tiny,
        policy,
        str(tmp_path / "store"),
        audit,
        max_new_tokens=1,
        watch_policy=False,
        history=store,
    )


def test_blocking_history_calls_run_off_the_event_loop(tiny: Any, tmp_path: Path, run: Any) -> None:
    store = NetworkLikeStore()
    guard = guard_with(tiny, tmp_path, store, CapturingAuditLog())

    async def go() -> None:
        async with guard:
            for _ in range(2):
                await collect(guard.respond(Turn(audio=tone(), session_id="call")))
            guard.forget_session("call")
            await asyncio.to_thread(store.forgotten.wait, 5.0)

    run(go())
    assert [op for op, _ in store.calls] == ["history", "append", "history", "append", "forget"]
    assert not any(on_loop for _, on_loop in store.calls), store.calls
    assert store.closed == 1  # Guard.close() closed the store it was given


def test_a_failing_history_store_costs_neither_the_turn_nor_its_record(
    tiny: Any, tmp_path: Path, run: Any
) -> None:
    audit = CapturingAuditLog()
    guard = guard_with(tiny, tmp_path, NetworkLikeStore(fail=True), audit)

    async def go() -> list[Any]:
        async with guard:
            return await collect(guard.respond(Turn(audio=tone(), session_id="call")))

    events = run(go())
    decision = events[-1]
    assert isinstance(decision, TurnDecision)
    [record] = audit.records
    assert record.id == decision.audit_id


def test_history_url_gives_a_redis_store_with_the_guard_budgets(tiny: Any) -> None:
    from sarsteer_guard.guard.history_redis import RedisConversationStore

    guard = Guard(
        tiny,
        history="redis://127.0.0.1:6379/0",
        history_turns=3,
        history_session_bytes=1000,
        history_total_bytes=5000,
    )
    store = guard.conversations
    assert isinstance(store, RedisConversationStore)
    assert (store.max_exchanges, store.max_session_bytes, store.max_bytes) == (3, 1000, 5000)
    store.close()


def test_serve_closes_the_bound_socket_when_the_guard_cannot_be_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse
    import socket

    from sarsteer_guard.cli import serve as serve_cli
    from sarsteer_guard.errors import GuardError
    from sarsteer_guard.server import runner

    bound: list[socket.socket] = []
    bind = runner.bind_socket

    def spy(host: str, port: int) -> socket.socket:
        bound.append(bind(host, port))
        return bound[-1]

    def broken(_: argparse.Namespace) -> Any:
        raise GuardError("history URL is not a Redis URL")

    monkeypatch.setattr(runner, "bind_socket", spy)
    monkeypatch.setattr(serve_cli, "_guard", broken)
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--scripted", "--port", "0"])
    with pytest.raises(GuardError):
        serve_cli.run(args)
    [sock] = bound
    assert sock.fileno() == -1  # closed, so the port is free for the fixed command line
