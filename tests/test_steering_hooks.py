from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from sarsteer_guard.errors import VectorsError
from sarsteer_guard.steering import (
    LastPositionCapture,
    SteeringHooks,
    SteeringVectors,
    VectorMeta,
    steer,
)

# transformers' own annotations (generate's union return, untyped eval) defeat strict mypy here.
Model = Any

N_LAYERS, HIDDEN, NEW = 3, 64, 5
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [20, 21, 22, 23, 24]]


def tiny_model(dtype: torch.dtype = torch.float32) -> Model:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=96,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,  # peaky logits: greedy decoding without near-ties
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model: Model = Qwen2ForCausalLM(cfg)
    model = model.eval().to(dtype)
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.do_sample = 0, None, False
    return model


@pytest.fixture(scope="module")
def model() -> Model:
    return tiny_model()


@pytest.fixture(scope="module")
def vectors() -> torch.Tensor:
    return torch.randn(N_LAYERS, HIDDEN, generator=torch.Generator().manual_seed(1)) * 4


def layers_of(model: Model) -> list[nn.Module]:
    return list(model.model.layers)


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def generate(
    model: Model, prompts: list[list[int]], new: int = NEW
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy generation with a KV cache: (new token ids [B, T], logits [B, T, V])."""
    ids, mask = left_pad(prompts)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new,
            use_cache=True,
            output_scores=True,
            return_dict_in_generate=True,
        )
    return out.sequences[:, ids.shape[1] :], torch.stack(out.scores, dim=1)


def hook_ids(layers: list[nn.Module]) -> list[set[int]]:
    # transformers installs its own output-capturing hooks lazily: compare, do not expect empty.
    return [set(layer._forward_hooks) for layer in layers]


class Probe:
    """Forward hooks that record a clone of each call's last position and sequence length."""

    def __init__(self, layer: nn.Module) -> None:
        self.last: list[torch.Tensor] = []
        self.seq: list[int] = []
        self.handle = layer.register_forward_hook(self)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        hs = output[0] if isinstance(output, tuple) else output
        self.last.append(hs[:, -1].detach().clone())
        self.seq.append(hs.shape[1])


# -- firing and lifecycle ----------------------------------------------------------------------


@pytest.mark.parametrize("prompt_only", [False, True])
def test_steers_prefill_and_every_decode_step(
    model: Model, vectors: torch.Tensor, prompt_only: bool
) -> None:
    layers = layers_of(model)
    before = Probe(layers[1])  # registered first: sees the unsteered output
    hooks = SteeringHooks(layers, vectors, alpha=0.5, prompt_only=prompt_only).start()
    after = Probe(layers[1])  # registered last: sees what the next layer gets
    try:
        generate(model, PROMPTS)
    finally:
        hooks.close()
        before.handle.remove()
        after.handle.remove()
    assert before.seq == [6] + [1] * (NEW - 1)  # prefill, then one call per decode step
    for step, (pre, post) in enumerate(zip(before.last, after.last, strict=True)):
        steered = step == 0 or not prompt_only
        expected = pre + 0.5 * vectors[1] if steered else pre
        torch.testing.assert_close(post, expected.expand_as(post), rtol=0, atol=1e-5)


def test_hooks_are_removed_on_exit_and_on_exception(model: Model, vectors: torch.Tensor) -> None:
    layers = layers_of(model)
    original = hook_ids(layers)
    with steer(layers, vectors, 0.1) as hooks:
        assert hooks.active
        assert all(len(h) == len(o) + 1 for h, o in zip(hook_ids(layers), original, strict=True))
    assert hook_ids(layers) == original
    assert not hooks.active
    hooks.close()  # idempotent
    with (
        pytest.raises(RuntimeError, match="boom"),
        LastPositionCapture(layers),
        steer(layers, vectors, 0.1, layer_ids=[0, 2]),
    ):
        raise RuntimeError("boom")
    assert hook_ids(layers) == original


def test_start_is_idempotent(model: Model, vectors: torch.Tensor) -> None:
    layers = layers_of(model)
    original = hook_ids(layers)
    hooks = SteeringHooks(layers, vectors, layer_ids=[1])
    hooks.start()
    hooks.start()
    assert [len(h) - len(o) for h, o in zip(hook_ids(layers), original, strict=True)] == [0, 1, 0]
    hooks.close()
    assert hook_ids(layers) == original


# -- numerics ----------------------------------------------------------------------------------


def test_alpha_zero_is_bit_identical_and_large_vector_changes_output(
    model: Model, vectors: torch.Tensor
) -> None:
    ids, logits = generate(model, PROMPTS)
    with steer(layers_of(model), vectors, 0.0):
        ids0, logits0 = generate(model, PROMPTS)
    assert torch.equal(ids0, ids)
    assert torch.equal(logits0, logits)
    with steer(layers_of(model), vectors, 2.0):
        ids2, logits2 = generate(model, PROMPTS)
    assert not torch.equal(ids2, ids)
    assert (logits2 - logits).abs().max() > 1.0


def test_set_alpha_switches_steering_without_reregistering(
    model: Model, vectors: torch.Tensor
) -> None:
    ids, logits = generate(model, PROMPTS)
    with steer(layers_of(model), vectors, 2.0) as hooks:
        steered, _ = generate(model, PROMPTS)
        handles = list(hooks._handles)
        hooks.set_alpha(0.0)
        off_ids, off_logits = generate(model, PROMPTS)
        hooks.set_alpha(2.0)
        again, _ = generate(model, PROMPTS)
        assert hooks._handles == handles
    assert torch.equal(off_ids, ids)
    assert torch.equal(off_logits, logits)
    assert torch.equal(again, steered)


def test_per_row_alpha_batch_equals_single_runs(model: Model, vectors: torch.Tensor) -> None:
    alphas = [1.5, 0.0, 0.7]
    layers = layers_of(model)
    with steer(layers, vectors, alphas):
        batch_ids, batch_logits = generate(model, PROMPTS)
    for prompt, alpha, ids, logits in zip(PROMPTS, alphas, batch_ids, batch_logits, strict=True):
        with steer(layers, vectors, alpha):
            single_ids, single_logits = generate(model, [prompt])
        assert torch.equal(single_ids[0], ids)
        torch.testing.assert_close(single_logits[0], logits, rtol=0, atol=1e-4)
        if alpha == 0.0:  # the unsteered row in a steered batch is an unsteered run
            plain_ids, plain_logits = generate(model, [prompt])
            assert torch.equal(plain_ids[0], ids)
            torch.testing.assert_close(plain_logits[0], logits, rtol=0, atol=1e-4)


def test_zero_alpha_row_is_bit_identical_within_the_batch(
    model: Model, vectors: torch.Tensor
) -> None:
    ids, logits = generate(model, PROMPTS)
    with steer(layers_of(model), torch.as_tensor(vectors), torch.tensor([3.0, 0.0, 3.0])):
        s_ids, s_logits = generate(model, PROMPTS)
    assert torch.equal(s_ids[1], ids[1])
    assert torch.equal(s_logits[1], logits[1])
    assert not torch.equal(s_logits[0], logits[0])


def test_beta_and_layer_ids_select_layers(model: Model, vectors: torch.Tensor) -> None:
    layers = layers_of(model)
    with steer(layers, vectors, 1.0, layer_ids=[2]):
        subset = generate(model, PROMPTS)
    with steer(layers, vectors, 1.0, beta=[0.0, 0.0, 1.0]):
        weighted = generate(model, PROMPTS)
    with steer(layers, vectors, 1.0, beta=torch.tensor([0.0, 0.0, 0.0])):
        off = generate(model, PROMPTS)
    assert torch.equal(subset[0], weighted[0])
    torch.testing.assert_close(subset[1], weighted[1], rtol=0, atol=1e-5)
    assert torch.equal(off[1], generate(model, PROMPTS)[1])


def test_set_vectors_and_set_beta_apply_in_place(model: Model, vectors: torch.Tensor) -> None:
    layers = layers_of(model)
    with steer(layers, vectors, 1.0):
        reference = generate(model, PROMPTS)
    with steer(layers, torch.zeros_like(vectors), 1.0) as hooks:
        hooks.set_vectors(vectors)
        swapped = generate(model, PROMPTS)
        hooks.set_beta([0.0] * N_LAYERS)
        off = generate(model, PROMPTS)
        with pytest.raises(VectorsError, match="shape"):
            hooks.set_vectors(vectors[:2])
    assert torch.equal(swapped[1], reference[1])
    assert torch.equal(off[1], generate(model, PROMPTS)[1])


def test_accepts_steering_vectors(model: Model, vectors: torch.Tensor) -> None:
    meta = VectorMeta(
        model_id="tiny",
        model_fingerprint="f" * 64,
        num_layers=N_LAYERS,
        hidden_size=HIDDEN,
        refusal_instruction="I cannot assist with that.",
        prompt="p",
        k=2,
        lam=1.0,
        n_harmful=2,
        n_benign=3,
        calibration_digest="c" * 64,
    )
    sv = SteeringVectors(vectors=vectors, meta=meta)
    layers = layers_of(model)
    with steer(layers, sv, 1.0):
        a = generate(model, PROMPTS)
    with steer(layers, vectors, 1.0):
        b = generate(model, PROMPTS)
    assert torch.equal(a[1], b[1])


def test_bf16_model_stays_bf16() -> None:
    model = tiny_model(torch.bfloat16)
    layers = layers_of(model)
    v = torch.randn(N_LAYERS, HIDDEN, generator=torch.Generator().manual_seed(1))
    ids, logits = generate(model, PROMPTS)
    seen: list[torch.dtype] = []
    handle = layers[-1].register_forward_hook(lambda m, a, o: seen.append(o.dtype))
    try:
        with steer(layers, v, 0.0) as hooks:
            ids0, logits0 = generate(model, PROMPTS)
            hooks.set_alpha(4.0)
            _, logits4 = generate(model, PROMPTS)
    finally:
        handle.remove()
    assert set(seen) == {torch.bfloat16}
    assert logits4.dtype == logits.dtype
    assert torch.equal(ids0, ids)
    assert torch.equal(logits0, logits)
    assert not torch.equal(logits4, logits)


def test_autograd_path_edits_out_of_place(model: Model, vectors: torch.Tensor) -> None:
    ids, mask = left_pad(PROMPTS)
    layers = layers_of(model)
    with torch.inference_mode(), steer(layers, vectors, 0.5):
        expected = model(input_ids=ids, attention_mask=mask).logits
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with steer(layers, vectors, 0.5):
        logits = model(inputs_embeds=emb, attention_mask=mask).logits
    logits[:, -1].sum().backward()
    assert emb.grad is not None
    assert torch.isfinite(emb.grad).all()
    torch.testing.assert_close(logits.detach(), expected, rtol=0, atol=1e-5)


def test_hooks_started_under_inference_mode_can_be_updated_outside(
    model: Model, vectors: torch.Tensor
) -> None:
    layers = layers_of(model)
    with torch.inference_mode():
        hooks = steer(layers, vectors, 1.0).start()
    try:
        hooks.set_alpha(0.0)  # would fail on inference tensors
        _, logits = generate(model, PROMPTS)
    finally:
        hooks.close()
    assert torch.equal(logits, generate(model, PROMPTS)[1])


def test_zero_alpha_preserves_negative_zero_bits() -> None:
    # x + 0.0 turns -0.0 into +0.0; the hooks add -0.0, the exact identity.
    layer = nn.Identity()
    x = torch.tensor([[[1.0, -0.0, 0.0, -2.5]], [[-0.0, -0.0, 3.0, 0.0]]])
    v = torch.tensor([[1.0, 2.0, -3.0, 0.0]])
    with torch.inference_mode(), steer([layer], v, [0.0, 1.0]):
        out = layer(x.clone())
    assert torch.equal(out[0].view(torch.int32), x[0].view(torch.int32))
    assert torch.equal(out[1, 0], torch.tensor([1.0, 2.0, 0.0, 0.0]))


def test_compiled_module_sees_in_place_alpha_changes() -> None:
    # Hooks registered before compilation are traced; set_alpha writes buffers in place, so
    # steering switches on and off in compiled code without recompiling.
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    torch.manual_seed(0)
    stack = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    v = torch.randn(2, 8)
    x = torch.randn(3, 4, 8)
    with torch.no_grad():
        plain = stack(x)
    counter = CompileCounter()
    with torch.no_grad(), steer(list(stack), v, 0.0) as hooks:
        compiled = torch.compile(stack, backend=counter, fullgraph=True)
        off = compiled(x)
        hooks.set_alpha(1.0)
        on = compiled(x)
        hooks.set_alpha(0.0)
        off_again = compiled(x)
    with torch.no_grad(), steer(list(stack), v, 1.0):
        eager_on = stack(x)
    torch._dynamo.reset()
    assert counter.frame_count == 1
    assert torch.equal(off, plain)
    assert torch.equal(off_again, plain)
    torch.testing.assert_close(on, eager_on, rtol=0, atol=1e-6)
    assert not torch.allclose(on, plain)


# -- tuple and 4-D layer outputs ---------------------------------------------------------------


class TupleLayer(nn.Module):
    """Returns ``(hidden, extra)`` like older transformers decoder layers."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return self.inner(*args, **kwargs), None


class Untuple(nn.Module):
    def __init__(self, inner: TupleLayer) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out: torch.Tensor = self.inner(*args, **kwargs)[0]
        return out


@pytest.fixture
def tuple_model() -> tuple[Model, list[nn.Module]]:
    model = tiny_model()
    tuple_layers: list[nn.Module] = []
    for i, layer in enumerate(list(model.model.layers)):
        wrapped = TupleLayer(layer)
        tuple_layers.append(wrapped)
        model.model.layers[i] = Untuple(wrapped)
    return model, tuple_layers


def test_tuple_outputs_are_steered_and_captured(
    tuple_model: tuple[Model, list[nn.Module]], vectors: torch.Tensor
) -> None:
    model, tuple_layers = tuple_model
    plain = tiny_model()  # same seed, same weights
    with steer(tuple_layers, vectors, 1.0):
        t_ids, t_logits = generate(model, PROMPTS)
    with steer(layers_of(plain), vectors, 1.0):
        p_ids, p_logits = generate(plain, PROMPTS)
    assert torch.equal(t_ids, p_ids)
    assert torch.equal(t_logits, p_logits)
    ids, mask = left_pad(PROMPTS)
    with torch.inference_mode():
        with LastPositionCapture(tuple_layers) as cap:
            model(input_ids=ids, attention_mask=mask)
        with LastPositionCapture(layers_of(plain)) as ref:
            plain(input_ids=ids, attention_mask=mask)
    assert torch.equal(cap.states, ref.states)
    # Grad-enabled path rebuilds the tuple out of place.
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with steer(tuple_layers, vectors, 1.0):
        out = model(inputs_embeds=emb, attention_mask=mask).logits
    torch.testing.assert_close(out[:, -1].detach(), p_logits[:, 0], rtol=0, atol=1e-4)


class Streams(nn.Module):
    """Gemma 3n-like layer: returns ``[streams, batch, seq, hidden]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x, 2 * x])


def test_four_d_outputs_use_stream_zero() -> None:
    layer = Streams()
    x = torch.randn(2, 5, 8)
    v = torch.ones(1, 8)
    with LastPositionCapture([layer]) as cap, steer([layer], v, 3.0):
        out = layer(x)
    assert torch.equal(cap.states[:, 0], x[:, -1])  # capture runs first: pre-steering state
    assert torch.equal(out[0, :, -1], x[:, -1] + 3.0)
    assert torch.equal(out[0, :, :-1], x[:, :-1])
    assert torch.equal(out[1], 2 * x)


# -- capture -----------------------------------------------------------------------------------


def test_capture_matches_output_hidden_states_with_left_padding(model: Model) -> None:
    ids, mask = left_pad(PROMPTS)
    layers = layers_of(model)
    with torch.inference_mode(), LastPositionCapture(layers) as cap:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    states = cap.states
    assert states.shape == (len(PROMPTS), N_LAYERS, HIDDEN)
    assert states.dtype == torch.float32
    assert states.device.type == "cpu"
    for j in range(N_LAYERS - 1):
        assert torch.equal(states[:, j], out.hidden_states[j + 1][:, -1])
    # transformers ties hidden_states[-1] to the final-normed last_hidden_state.
    with torch.inference_mode():
        normed = model.model.norm(states[:, -1])
    torch.testing.assert_close(normed, out.hidden_states[-1][:, -1], rtol=0, atol=1e-5)
    # Each row is its own real last token: equal to running the prompt alone.
    for i, prompt in enumerate(PROMPTS):
        with torch.inference_mode(), LastPositionCapture(layers) as single:
            model(input_ids=torch.tensor([prompt]))
        torch.testing.assert_close(single.states[0], states[i], rtol=0, atol=1e-4)


def test_capture_copies_and_keeps_latest_call(model: Model) -> None:
    layer = nn.Identity()
    cap = LastPositionCapture([layer])
    with pytest.raises(VectorsError, match="no forward pass"):
        _ = cap.states
    x = torch.randn(2, 3, 4)
    with cap:
        layer(x)
        first = cap.states
        x[:, -1] += 1.0  # editing the stream later must not change the capture
        assert torch.equal(cap.states, first)
        layer(torch.zeros(5, 2, 4))  # new batch size: buffer reallocated
    assert cap.states.shape == (5, 1, 4)
    assert torch.equal(cap.device_states, torch.zeros(5, 1, 4))
    with (
        pytest.raises(VectorsError, match="tensor or a tuple"),
        LastPositionCapture([nn.Identity()]) as c,
    ):
        c._layers[0]({"x": x})


def test_capture_works_under_no_grad_after_inference_mode(model: Model) -> None:
    layer = nn.Identity()
    with LastPositionCapture([layer]) as cap:
        with torch.inference_mode():
            layer(torch.ones(2, 3, 4))
        with torch.no_grad():
            layer(torch.zeros(2, 3, 4))
    assert torch.equal(cap.states, torch.zeros(2, 1, 4))


# -- readout -----------------------------------------------------------------------------------


def test_readout_is_the_prefill_projection_onto_the_unit_vector(
    model: Model, vectors: torch.Tensor
) -> None:
    layers = layers_of(model)
    ids, mask = left_pad(PROMPTS)
    with torch.inference_mode(), LastPositionCapture(layers) as cap:
        model(input_ids=ids, attention_mask=mask)
    unit = vectors[1] / vectors[1].norm()
    expected = cap.states[:, 1] @ unit
    with steer(layers, vectors, 0.0, readout_layer=1) as hooks:
        assert hooks.readout() is None
        generate(model, PROMPTS)  # decode steps must not overwrite the prefill value
    readout = hooks.readout()
    assert readout is not None
    assert readout.shape == (len(PROMPTS),)
    torch.testing.assert_close(readout, expected, rtol=0, atol=1e-4)


# -- validation --------------------------------------------------------------------------------


def test_validation_errors(model: Model, vectors: torch.Tensor) -> None:
    layers = layers_of(model)
    with pytest.raises(VectorsError, match="vectors have 2 layers but 3 layers were given"):
        SteeringHooks(layers, vectors[:2])
    with pytest.raises(VectorsError, match="one weight per layer"):
        SteeringHooks(layers, vectors, beta=[1.0])
    with pytest.raises(VectorsError, match="layer_ids"):
        SteeringHooks(layers, vectors, layer_ids=[0, 0])
    with pytest.raises(VectorsError, match="layer_ids"):
        SteeringHooks(layers, vectors, layer_ids=[3])
    with pytest.raises(VectorsError, match="readout_layer"):
        SteeringHooks(layers, vectors, readout_layer=-1)
    with pytest.raises(VectorsError, match="NaN"):
        SteeringHooks(layers, vectors, alpha=float("nan"))
    with pytest.raises(VectorsError, match="empty"):
        SteeringHooks(layers, vectors, alpha=[])
    with steer(layers, vectors, [1.0, 2.0]), pytest.raises(VectorsError, match="2 rows"):
        generate(model, PROMPTS)
    wide = torch.zeros(N_LAYERS, HIDDEN + 1)
    with steer(layers, wide, 1.0), pytest.raises(VectorsError, match="hidden size"):
        generate(model, PROMPTS)
