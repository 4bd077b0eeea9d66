"""Steering hooks registered once per model and rewritten in place for every batch.

First on a tiny Qwen2 text model (SteeringHooks in long-lived use: ``max_rows`` buffers,
vectors / layers / readout switched between batches), then through the transformers
backend on the built-in audio model (one set of hooks per model, shared by backends,
alpha-0 rows unchanged by the steered rows they are batched with).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from sarsteer_guard.backends.transformers import TransformersBackend
from sarsteer_guard.errors import VectorsError
from sarsteer_guard.guard.backend import RowDone, RowRequest, SteeringSpec
from sarsteer_guard.guard.vectors import LoadedVectors
from sarsteer_guard.models import Message, load_model
from sarsteer_guard.steering import SteeringHooks, SteeringVectors, VectorMeta, steer
from sarsteer_guard.testing.speech import synthesize

Model = Any  # transformers' own annotations defeat strict typing here
N_LAYERS, HIDDEN = 3, 64
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [20, 21, 22, 23, 24]]


@pytest.fixture(scope="module")
def model() -> Model:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=96,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    m: Model = Qwen2ForCausalLM(cfg).eval()
    m.generation_config.pad_token_id, m.generation_config.eos_token_id = 0, None
    m.generation_config.do_sample = False
    return m


def generate(model: Model, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=5,
            output_scores=True,
            return_dict_in_generate=True,
        )
    return out.sequences[:, width:], torch.stack(out.scores, dim=1)


def hook_ids(layers: list[nn.Module]) -> list[set[int]]:
    return [set(layer._forward_hooks) for layer in layers]


def random_vectors(seed: int) -> torch.Tensor:
    return torch.randn(N_LAYERS, HIDDEN, generator=torch.Generator().manual_seed(seed)) * 4


def test_one_registration_serves_batches_with_different_sets_layers_and_sizes(
    model: Model,
) -> None:
    layers = list(model.model.layers)
    v1, v2 = random_vectors(1), random_vectors(2)
    plain_ids, plain_logits = generate(model, PROMPTS)
    plain_two = generate(model, PROMPTS[:2])
    with steer(layers, v1, [1.5, 0.0, 0.7]):
        want_a = generate(model, PROMPTS)
    with steer(layers, v2, [0.0, 2.0], layer_ids=[1]):
        want_b = generate(model, PROMPTS[:2])
    before = hook_ids(layers)
    hooks = SteeringHooks(layers, torch.zeros(N_LAYERS, HIDDEN), alpha=0.0, max_rows=4)
    hooks.set_enabled(False)
    with hooks:
        registered = hook_ids(layers)
        buffers = [t.data_ptr() for t in hooks._delta.values()]

        off = generate(model, PROMPTS)  # disabled: untouched, bit for bit
        hooks.set_vectors(v1)
        hooks.set_alpha([1.5, 0.0, 0.7])
        hooks.set_enabled(True)
        got_a = generate(model, PROMPTS)

        hooks.set_vectors(v2)
        hooks.set_layer_ids([1])
        hooks.set_alpha([0.0, 2.0])
        got_b = generate(model, PROMPTS[:2])

        assert hook_ids(layers) == registered  # nothing re-registered between batches
        assert [t.data_ptr() for t in hooks._delta.values()] == buffers  # written in place
    assert hook_ids(layers) == before
    assert torch.equal(off[0], plain_ids)
    assert torch.equal(off[1], plain_logits)
    assert torch.equal(got_a[0], want_a[0])
    torch.testing.assert_close(got_a[1], want_a[1], rtol=0, atol=1e-5)
    assert torch.equal(got_a[1][1], plain_logits[1])  # alpha 0 row: bit-identical
    assert torch.equal(got_b[0], want_b[0])
    torch.testing.assert_close(got_b[1], want_b[1], rtol=0, atol=1e-5)
    assert torch.equal(got_b[1][0], plain_two[1][0])


def test_buffers_grow_once_and_rows_must_match_alpha(model: Model) -> None:
    layers = list(model.model.layers)
    with SteeringHooks(layers, random_vectors(3), alpha=[1.0, 1.0], max_rows=2) as hooks:
        hooks.set_alpha([0.5, 0.0, 0.5])  # more rows than max_rows: grows, still steers
        grown, _ = generate(model, PROMPTS)
        with pytest.raises(VectorsError, match="alpha has 3 rows but the batch has 2"):
            generate(model, PROMPTS[:2])
        hooks.set_alpha(0.5)  # one value steers every row
        assert generate(model, PROMPTS[:2])[0].shape[0] == 2
    with steer(layers, random_vectors(3), [0.5, 0.0, 0.5]):
        want, _ = generate(model, PROMPTS)
    assert torch.equal(grown, want)


def test_layers_and_readout_can_only_move_to_hooked_layers(model: Model) -> None:
    layers = list(model.model.layers)
    with SteeringHooks(layers, random_vectors(4), layer_ids=[0, 2], readout_layer=0) as hooks:
        with pytest.raises(VectorsError, match=r"layers \[1\] have no steering hook"):
            hooks.set_layer_ids(None)
        with pytest.raises(VectorsError, match="readout_layer 1 has no hook"):
            hooks.set_readout_layer(1)
        hooks.set_readout_layer(2)
        generate(model, PROMPTS)
        readout = hooks.readout()
        assert readout is not None
        assert readout.shape == (3,)
        hooks.set_enabled(False)
        hooks.set_readout_layer(2)  # forgets the last readout
        generate(model, PROMPTS)
        assert hooks.readout() is None  # disabled hooks record nothing


# -- through the transformers backend ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_model("tiny")


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return synthesize("Turn the lights off in the kitchen.")


@pytest.fixture
def run() -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


def loaded(tiny: Any, seed: int) -> LoadedVectors:
    tensor = torch.randn(
        tiny.num_layers, tiny.hidden_size, generator=torch.Generator().manual_seed(seed)
    )
    meta = VectorMeta(
        model_id=tiny.model_id,
        model_fingerprint=tiny.fingerprint,
        num_layers=tiny.num_layers,
        hidden_size=tiny.hidden_size,
        refusal_instruction="I cannot assist with that.",
        prompt="p",
        k=1,
        lam=1.0,
        n_harmful=1,
        n_benign=1,
        calibration_digest=f"{seed:064x}",
    )
    return LoadedVectors.given(SteeringVectors(vectors=tensor * 8, meta=meta))


async def batch(backend: TransformersBackend, rows: list[RowRequest]) -> list[RowDone]:
    """Submit rows so they share one batch (the worker is held by a job meanwhile)."""
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()
    hold = asyncio.ensure_future(
        asyncio.to_thread(
            backend.run_exclusive,
            lambda: asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(),
        )
    )
    await asyncio.sleep(0.05)
    handles = [backend.submit(row) for row in rows]
    gate.set()
    await hold
    out = []
    for handle in handles:
        events = [event async for event in handle.events()]
        assert isinstance(events[-1], RowDone)
        out.append(events[-1])
    return out


def test_the_backend_registers_one_set_of_hooks_per_model_and_switches_sets_in_place(
    tiny: Any, clip: np.ndarray, run: Any
) -> None:
    layers = list(tiny.decoder_layers)
    before = hook_ids(layers)
    conversation = [Message(role="user", text="Please help.", audio=clip)]
    first, second = loaded(tiny, 1), loaded(tiny, 2)

    def row(vectors: LoadedVectors | None, alpha: float) -> RowRequest:
        return RowRequest(conversation, SteeringSpec(vectors=vectors), alpha, 6)

    one = TransformersBackend(tiny, max_batch_size=4)
    other = TransformersBackend(tiny, max_batch_size=4)
    one.start()
    other.start()
    try:
        registered = hook_ids(layers)
        assert all(len(now - then) == 1 for now, then in zip(registered, before, strict=True))

        async def go() -> tuple[list[RowDone], list[RowDone], list[RowDone]]:
            plain = await batch(one, [row(None, 0.0), row(None, 0.0)])
            mixed = await batch(one, [row(first, 0.0), row(first, 4.0)])
            switched = await batch(other, [row(second, 4.0), row(second, 0.0)])
            return plain, mixed, switched

        plain, mixed, switched = run(go())
        assert hook_ids(layers) == registered  # no hooks added or removed between batches
        assert list(one.batch_sizes) == [2, 2]
        assert mixed[0].text == plain[0].text  # alpha 0 beside a steered row: unchanged
        assert switched[1].text == plain[0].text
        assert mixed[1].text != plain[0].text  # the steered row really was steered
        assert switched[0].text != mixed[1].text  # ... with the set of its own batch
        assert mixed[0].readout is not None
        assert plain[0].readout is None
        one.stop()
        assert hook_ids(layers) == registered  # still serving through the other backend
    finally:
        one.stop()
        other.stop()
    assert hook_ids(layers) == before  # the last backend to stop removes them
