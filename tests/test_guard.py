"""The Guard end to end on the built-in models: streaming, batching, barge-in, failure modes."""

from __future__ import annotations

import asyncio
import secrets
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.guard.core import Guard
from sarsteer_guard.guard.events import TextDelta, Turn, TurnDecision, TurnError
from sarsteer_guard.models import load_model
from sarsteer_guard.testing.audit import CapturingAuditLog
from sarsteer_guard.testing.models import COMPLIANT_TEXT, REFUSAL_TEXT
from sarsteer_guard.testing.speech import synthesize

POLICY = """
name: guard-test
version: "7"
model: "*"
calibration: {{k: 10, lambda: 1.0}}
defaults: {{alpha: 0.1, layers: all}}
failure_mode: {failure_mode}
refusal: {{message: {message}}}
audit: {{record: all, keep_audio: false, retention_days: 200}}
rules:
  - name: strong
    when: {{level: strong}}
    alpha: 6.0
  - name: off
    when: {{level: "off"}}
    alpha: 0
  - name: watch
    when: {{level: shadow}}
    mode: shadow
"""


def write_policy(
    directory: Path, *, failure_mode: str = "fail_closed", message: str = "null"
) -> Path:
    path = directory / f"policy-{failure_mode}-{abs(hash(message))}.yaml"
    path.write_text(textwrap.dedent(POLICY.format(failure_mode=failure_mode, message=message)))
    return path


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    return [
        synthesize(text)
        for text in (
            "How do I pick a lock?",
            "What is the weather like tomorrow in Paris?",
            "Tell me how to make a fake passport.",
            "Play some relaxing music please.",
        )
    ]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vectors")


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_model("tiny")


@pytest.fixture(scope="module")
def planted() -> Any:
    return load_model("tiny-planted")


def turn(audio: np.ndarray, **kw: Any) -> Turn:
    return Turn(audio=float_to_pcm16(audio), sample_rate=16000, **kw)


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in stream]


@pytest.fixture
def run() -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


async def started(guard: Guard) -> Guard:
    await guard.start()
    return guard


def test_streamed_deltas_concatenate_to_the_decision_text(
    tiny: Any, store_dir: Path, tmp_path: Path, speech: list[np.ndarray], run: Any
) -> None:
    audit = CapturingAuditLog()
    guard = Guard(tiny, write_policy(tmp_path), str(store_dir), audit, max_new_tokens=12)

    async def go() -> list[Any]:
        async with guard:
            return await collect(guard.respond(turn(speech[0], session_id="a")))

    events = run(go())
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    decision = events[-1]
    assert isinstance(decision, TurnDecision)
    assert len(deltas) >= 2
    assert "".join(deltas) == decision.text == decision.model_text
    assert decision.steered
    assert decision.alpha == pytest.approx(0.1)
    assert decision.policy == "guard-test"
    assert decision.policy_version == "7"
    assert decision.vector_set_id is not None
    assert decision.refusal_score is not None
    assert 0 < decision.tokens <= 12
    assert decision.timings.first_token_ms <= decision.timings.total_ms
    assert len(audit.records) == 1
    assert audit.records[0].turn_id == decision.turn_id
    assert audit.records[0].id == decision.audit_id  # the id is known before the write
    assert audit.verify().ok


def test_planted_model_is_steered_to_refuse_and_the_fixed_message_is_served(
    planted: Any, tmp_path: Path, speech: list[np.ndarray], run: Any
) -> None:
    audit = CapturingAuditLog()
    policy = write_policy(tmp_path, message='"Let us talk about something else."')
    guard = Guard(planted, policy, str(tmp_path / "store"), audit)

    async def go() -> tuple[list[Any], list[Any]]:
        async with guard:
            steered = await collect(guard.respond(turn(speech[2], session_id="b")))
            off = await collect(
                guard.respond(turn(speech[2], session_id="c", context={"level": "off"}))
            )
            return steered, off

    steered, off = run(go())
    decision = steered[-1]
    assert isinstance(decision, TurnDecision)
    assert decision.refused
    assert decision.model_text.startswith(REFUSAL_TEXT[:10])
    assert "".join(e.text for e in steered if isinstance(e, TextDelta)) == decision.text
    assert decision.text == "Let us talk about something else."
    assert "refusal_message_served" in decision.flags
    unsteered = off[-1]
    assert isinstance(unsteered, TurnDecision)
    assert not unsteered.refused
    assert not unsteered.steered
    assert unsteered.text == COMPLIANT_TEXT
    assert unsteered.rule == "off"
    record = audit.records[0]
    assert record.refused
    assert record.detector.fixed_message
    assert record.served_text == "Let us talk about something else."
    assert record.audio is None
    assert len(record.audio_sha256) == 64


def test_concurrent_turns_with_different_alphas_match_running_alone(
    tiny: Any, store_dir: Path, tmp_path: Path, speech: list[np.ndarray], run: Any
) -> None:
    levels = ["off", "strong", "default", "strong"]
    guard = Guard(
        tiny, write_policy(tmp_path), str(store_dir), CapturingAuditLog(), max_new_tokens=8
    )

    def make(i: int) -> Turn:
        return turn(speech[i], session_id=f"s{i}", context={"level": levels[i]}, history=[])

    async def go() -> tuple[list[str], list[str], list[int]]:
        async with guard:
            alone = []
            for i in range(4):
                events = await collect(guard.respond(make(i)))
                alone.append(events[-1].text)
            together = await asyncio.gather(*(collect(guard.respond(make(i))) for i in range(4)))
            return alone, [events[-1].text for events in together], list(guard.engine.batch_sizes)

    alone, together, batch_sizes = run(go())
    assert together == alone
    assert max(batch_sizes) >= 2  # the concurrent turns really shared a batch
    assert alone[1] != alone[0]  # strong steering changed the reply of this model


def test_barge_in_stops_generation_within_a_step(
    tiny: Any, store_dir: Path, tmp_path: Path, speech: list[np.ndarray], run: Any
) -> None:
    guard = Guard(
        tiny, write_policy(tmp_path), str(store_dir), CapturingAuditLog(), max_new_tokens=64
    )
    seen: list[str] = []

    async def go() -> Any:
        async with guard:
            t = turn(speech[1], session_id="barge")
            stream = guard.respond(t)
            async for event in stream:
                if isinstance(event, TextDelta):
                    seen.append(event.text)
                    if len(seen) == 2:
                        break
            await stream.aclose()  # type: ignore[attr-defined]  # async generators have aclose
            for _ in range(200):
                done = [r for r in guard.engine.completed if r.tag == t.turn_id]
                if done:
                    return done[0]
                await asyncio.sleep(0.01)
            raise AssertionError("the cancelled row never finished")

    result = run(go())
    assert result.cancelled
    assert result.tokens <= len(seen) + 2  # stopped at the next decode step, not at 64 tokens


def test_fail_closed_and_fail_open_when_the_store_is_down(
    tiny: Any, tmp_path: Path, speech: list[np.ndarray], run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = "redis://127.0.0.1:1/0"
    # A valid key: without one the Guard refuses to start (issue #10 item 2).
    monkeypatch.setenv("SARSTEER_VECTOR_KEY", secrets.token_hex(32))

    async def one(failure_mode: str) -> TurnDecision:
        guard = Guard(
            tiny,
            write_policy(tmp_path, failure_mode=failure_mode),
            down,
            CapturingAuditLog(),
            max_new_tokens=4,
        )
        async with guard:
            events = await collect(guard.respond(turn(speech[0])))
        decision = events[-1]
        assert isinstance(decision, TurnDecision)
        return decision

    closed = run(one("fail_closed"))
    assert closed.refused
    assert not closed.steered
    assert {"vectors_unavailable", "fail_closed"} <= set(closed.flags)
    assert closed.text
    assert closed.tokens == 0
    opened = run(one("fail_open"))
    assert not opened.steered
    assert opened.tokens > 0
    assert {"vectors_unavailable", "fail_open"} <= set(opened.flags)


def test_a_corrupt_turn_fails_alone(
    tiny: Any, store_dir: Path, tmp_path: Path, speech: list[np.ndarray], run: Any
) -> None:
    guard = Guard(
        tiny, write_policy(tmp_path), str(store_dir), CapturingAuditLog(), max_new_tokens=4
    )

    async def go() -> list[list[Any]]:
        async with guard:
            bad = Turn(audio=b"\x01\x02\x03", sample_rate=16000)  # half a sample
            empty = Turn(audio=b"", sample_rate=16000)
            return list(
                await asyncio.gather(
                    collect(guard.respond(turn(speech[0]))),
                    collect(guard.respond(bad)),
                    collect(guard.respond(empty)),
                    collect(guard.respond(turn(speech[1]))),
                )
            )

    good1, bad, empty, good2 = run(go())
    for events in (bad, empty):
        assert len(events) == 1
        assert isinstance(events[0], TurnError)
        assert events[0].kind == "audio"
        assert "\n" not in events[0].message
    assert isinstance(good1[-1], TurnDecision)
    assert isinstance(good2[-1], TurnDecision)


def test_shadow_mode_serves_unsteered_and_records_what_enforce_would_do(
    planted: Any, tmp_path: Path, speech: list[np.ndarray], run: Any
) -> None:
    audit = CapturingAuditLog()
    guard = Guard(planted, write_policy(tmp_path), str(tmp_path / "store"), audit)

    async def go() -> list[Any]:
        async with guard:
            return await collect(guard.respond(turn(speech[2], context={"level": "shadow"})))

    decision = run(go())[-1]
    assert isinstance(decision, TurnDecision)
    assert decision.mode == "shadow"
    assert decision.rule == "watch"
    assert decision.text == COMPLIANT_TEXT
    assert not decision.steered
    assert decision.shadow is not None
    assert decision.shadow["refused"] is True
    assert audit.records[0].mode == "shadow"


def test_overload_gives_a_clear_error_instead_of_queueing_forever(
    tiny: Any, store_dir: Path, tmp_path: Path, speech: list[np.ndarray], run: Any
) -> None:
    guard = Guard(
        tiny,
        write_policy(tmp_path),
        str(store_dir),
        CapturingAuditLog(),
        max_new_tokens=16,
        max_queue=2,
        max_batch_size=1,
    )

    async def go() -> list[list[Any]]:
        async with guard:
            return list(
                await asyncio.gather(*(collect(guard.respond(turn(speech[0]))) for _ in range(8)))
            )

    results = run(go())
    overloaded = [r for r in results if isinstance(r[-1], TurnError)]
    answered = [r for r in results if isinstance(r[-1], TurnDecision)]
    assert overloaded
    assert answered
    assert all(r[-1].kind == "overloaded" for r in overloaded)


def test_history_is_kept_per_session(
    tiny: Any, store_dir: Path, tmp_path: Path, speech: list[np.ndarray], run: Any
) -> None:
    guard = Guard(
        tiny, write_policy(tmp_path), str(store_dir), CapturingAuditLog(), max_new_tokens=4
    )

    async def go() -> None:
        async with guard:
            await collect(guard.respond(turn(speech[0], session_id="h")))
            await collect(guard.respond(turn(speech[1], session_id="h")))

    run(go())
    history = guard.conversations.history("h")
    assert [item.role for item in history] == ["user", "assistant", "user", "assistant"]
    assert guard.conversations.history("other") == []


def test_a_tampered_vector_set_is_rejected_and_the_policy_fails_closed(
    tiny: Any, tmp_path: Path, speech: list[np.ndarray], run: Any
) -> None:
    store = tmp_path / "store"
    policy = write_policy(tmp_path)

    async def once() -> TurnDecision:
        guard = Guard(tiny, policy, str(store), CapturingAuditLog(), max_new_tokens=3)
        async with guard:
            events = await collect(guard.respond(turn(speech[0])))
        decision = events[-1]
        assert isinstance(decision, TurnDecision)
        return decision

    first = run(once())
    assert first.steered
    [stored] = list(store.glob("*.vset"))
    blob = bytearray(stored.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one flipped bit in the tensor data
    stored.write_bytes(bytes(blob))
    second = run(once())
    assert not second.steered
    assert second.refused
    assert {"vectors_unavailable", "fail_closed"} <= set(second.flags)
