"""connect.py: building a guard, owning its lifecycle (GuardHandle), closing turns (turn_events)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from sarsteer_guard.connect import GuardHandle, GuardOptionsError, build_guard, turn_events
from sarsteer_guard.errors import GuardError, ModelLoadError
from sarsteer_guard.guard.events import GuardEvent, TextDelta, Turn, TurnDecision
from sarsteer_guard.remote import RemoteGuard
from sarsteer_guard.server.scripted import ScriptedGuard

TURN_AUDIO = bytes(3200)


@dataclass
class SlowStart(ScriptedGuard):
    """Counts starts; each waits for ``gate``; the first ``failures`` starts raise."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    failures: int = 0
    start_calls: int = 0
    close_calls: int = 0

    async def start(self) -> None:
        self.start_calls += 1
        await self.gate.wait()
        if self.start_calls <= self.failures:
            raise ModelLoadError(f"load {self.start_calls} failed; check the model path")
        await super().start()

    async def close(self) -> None:
        self.close_calls += 1
        await super().close()


def counting_builder(guard: ScriptedGuard) -> tuple[list[ScriptedGuard], GuardHandle]:
    built: list[ScriptedGuard] = []

    def build() -> ScriptedGuard:
        built.append(guard)
        return guard

    return built, GuardHandle(build=build)


# -- GuardHandle -----------------------------------------------------------------------------
async def test_concurrent_callers_share_one_start() -> None:
    guard = SlowStart()
    built, handle = counting_builder(guard)
    assert built == []  # a handle does no work until asked
    waiters = [asyncio.create_task(handle.start()) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert guard.start_calls == 1
    guard.gate.set()
    results = await asyncio.gather(*waiters)
    assert all(r is guard for r in results)
    assert await handle.start() is guard  # started: not started again
    assert (guard.start_calls, len(built), handle.started) == (1, 1, True)
    await handle.close()
    assert guard.close_calls == 1


async def test_failed_start_is_retried_by_the_next_caller() -> None:
    guard = SlowStart(failures=1)
    guard.gate.set()
    built, handle = counting_builder(guard)
    with pytest.raises(ModelLoadError, match="load 1 failed"):
        await handle.start()
    assert not handle.started
    assert isinstance(handle.start_error, ModelLoadError)
    assert await handle.start() is guard
    assert (guard.start_calls, len(built)) == (2, 1)  # retried, never rebuilt
    assert handle.started
    assert handle.start_error is None
    await handle.close()


async def test_a_cancelled_caller_does_not_abort_the_start() -> None:
    guard = SlowStart()
    _, handle = counting_builder(guard)
    impatient = asyncio.create_task(handle.start())
    await asyncio.sleep(0.01)
    impatient.cancel()  # a barge-in while the model loads
    with pytest.raises(asyncio.CancelledError):
        await impatient
    guard.gate.set()
    assert await handle.start() is guard
    assert guard.start_calls == 1
    await handle.close()


async def test_given_guard_is_started_but_never_closed() -> None:
    guard = ScriptedGuard()
    handle = GuardHandle(guard)
    assert not handle.owned
    assert handle.current is guard
    assert await handle.start() is guard
    assert guard.started
    await handle.close()
    await handle.close()
    assert not guard.closed
    with pytest.raises(GuardError, match="closed"):
        await handle.start()


async def test_built_guard_is_closed_and_a_start_in_flight_stopped() -> None:
    guard = SlowStart()
    _, handle = counting_builder(guard)
    assert handle.owned
    assert handle.current is None
    waiting = asyncio.create_task(handle.start())
    await asyncio.sleep(0.01)
    await handle.close()  # the start never finishes: close cancels it, then closes the guard
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (guard.close_calls, guard.started) == (1, False)
    assert handle.current is None
    await handle.close()
    assert guard.close_calls == 1


async def test_unstarted_handle_closes_without_building() -> None:
    built, handle = counting_builder(ScriptedGuard())
    await handle.close()
    assert built == []
    with pytest.raises(GuardError, match="closed"):
        _ = handle.guard


def test_from_options_refuses_a_guard_and_a_remote_url() -> None:
    with pytest.raises(GuardOptionsError, match="either guard= or remote_url="):
        GuardHandle.from_options(ScriptedGuard(), remote_url="ws://127.0.0.1:9/v1/turns")
    with pytest.raises(ValueError, match="either guard= or remote_url="):  # also a ValueError
        GuardHandle.from_options(ScriptedGuard(), remote_url="ws://127.0.0.1:9/v1/turns")
    with pytest.raises(GuardOptionsError, match="a guard or a way to build one"):
        GuardHandle()


def test_remote_url_builds_a_remote_guard_lazily_without_connecting() -> None:
    handle = GuardHandle.from_options(remote_url="ws://127.0.0.1:9/v1/turns")
    assert handle.current is None
    guard = handle.guard
    assert isinstance(guard, RemoteGuard)
    assert guard.url == "ws://127.0.0.1:9/v1/turns"
    assert not guard.ready
    assert handle.guard is guard


def test_build_guard_passes_the_options_to_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []

    def fake_guard(**kwargs: object) -> ScriptedGuard:
        seen.append(kwargs)
        return ScriptedGuard()

    monkeypatch.setattr("sarsteer_guard.guard.core.Guard", fake_guard)
    assert isinstance(
        build_guard(model="tiny", policy="p.yaml", audit="sqlite:///a.db"), ScriptedGuard
    )
    assert seen == [
        {
            "model": "tiny",
            "policy": "p.yaml",
            "store": None,
            "audit": "sqlite:///a.db",
            "engine": "transformers",
        }
    ]
    # Issue #10 item 23: no model is no longer the random test model but an error.
    with pytest.raises(GuardOptionsError, match="model="):
        build_guard(model=None, policy="p.yaml")
    assert len(seen) == 1


# -- turn_events -----------------------------------------------------------------------------
async def test_leaving_the_block_early_cancels_the_turn() -> None:
    guard = ScriptedGuard(reply="one two three four five", delay_s=0.0)
    turn = Turn(audio=TURN_AUDIO)
    async with turn_events(guard, turn) as events:
        async for event in events:
            assert isinstance(event, TextDelta)
            break  # barge-in
    assert guard.cancelled == [turn.turn_id]


async def test_an_error_in_the_block_still_closes_the_turn() -> None:
    guard = ScriptedGuard(reply="one two three", delay_s=0.0)
    turn = Turn(audio=TURN_AUDIO)

    async def speak() -> None:
        async with turn_events(guard, turn) as events:
            await anext(aiter(events))
            raise RuntimeError("the TTS died")

    with pytest.raises(RuntimeError, match="the TTS died"):
        await speak()
    assert guard.cancelled == [turn.turn_id]


async def test_cancelling_the_task_closes_the_turn() -> None:
    guard = ScriptedGuard(reply="one two three", delay_s=10.0)
    turn = Turn(audio=TURN_AUDIO)
    entered = asyncio.Event()

    async def consume() -> None:
        async with turn_events(guard, turn) as events:
            entered.set()
            async for _ in events:
                pass

    task = asyncio.create_task(consume())
    await entered.wait()
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guard.cancelled == [turn.turn_id]


async def test_a_finished_turn_is_not_reported_cancelled() -> None:
    guard = ScriptedGuard(reply="done", delay_s=0.0)
    turn = Turn(audio=TURN_AUDIO)
    async with turn_events(guard, turn) as events:
        seen = [event async for event in events]
    assert isinstance(seen[-1], TurnDecision)
    assert guard.cancelled == []


class _Iterator:
    """A non-generator event iterator (RemoteGuard-style), optionally closeable."""

    def __init__(self, turn_id: str, close_error: Exception | None = None) -> None:
        self.turn_id = turn_id
        self.close_error = close_error
        self.closed = False

    def __aiter__(self) -> _Iterator:
        return self

    async def __anext__(self) -> GuardEvent:
        return TextDelta(self.turn_id, "hi")

    async def aclose(self) -> None:
        self.closed = True
        if self.close_error is not None:
            raise self.close_error


@dataclass
class _IteratorGuard(ScriptedGuard):
    opened: list[_Iterator] = field(default_factory=list)
    close_error: Exception | None = None

    def respond(self, turn: Turn) -> AsyncIterator[GuardEvent]:
        self.opened.append(_Iterator(turn.turn_id, self.close_error))
        return self.opened[-1]


async def test_iterators_are_closed_and_close_failures_do_not_mask_the_turn() -> None:
    guard = _IteratorGuard(close_error=OSError("socket gone"))
    async with turn_events(guard, Turn(audio=TURN_AUDIO)) as events:
        assert isinstance(await anext(aiter(events)), TextDelta)
    assert guard.opened[0].closed  # closed; its OSError was logged, not raised
