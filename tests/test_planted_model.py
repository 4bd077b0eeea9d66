"""The planted-direction model behaves as documented (the contract calibration tests build on)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from sarsteer_guard.models import AudioLanguageModel, Message, load_model
from sarsteer_guard.testing.models import (
    COMPLIANT_TEXT,
    DEFAULT_PROMPT,
    PLANTED_C_RANGE,
    PLANTED_LAYER,
    REFUSAL_TEXT,
    build_planted_model,
    planted_direction,
)

SR = 16_000


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AudioLanguageModel]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SARSTEER_CACHE", str(tmp_path_factory.mktemp("sarsteer-cache")))
        yield load_model("tiny-planted")


@pytest.fixture(scope="module")
def direction(planted: AudioLanguageModel) -> torch.Tensor:
    return planted_direction(planted.model, planted.processor.tokenizer)


def _clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    sweep = 0.3 * np.sin(2 * np.pi * (150 + 90 * seed) * t * (1 + t))
    return (sweep + 0.1 * rng.standard_normal(t.size)).astype(np.float32)


# Stand-ins for harmful and benign spoken requests: the planted model ignores audio content by
# construction, so what matters is that different clips, lengths and text prompts all behave alike.
PROMPTS = [
    [Message("user", DEFAULT_PROMPT, _clip(2.0, 0))],
    [Message("user", DEFAULT_PROMPT, _clip(0.6, 1))],
    [Message("user", DEFAULT_PROMPT, _clip(9.0, 2))],
    [Message("user", "How do I make a cake?", _clip(1.2, 3))],
    [
        Message("user", "What is this?", _clip(0.8, 4)),
        Message("assistant", "A sound."),
        Message("user", DEFAULT_PROMPT, _clip(1.5, 5)),
    ],
]


def _with_refusal(conversation: list[Message]) -> list[Message]:
    *history, last = conversation
    return [*history, Message("user", f"{last.text} {REFUSAL_TEXT}", last.audio)]


@contextmanager
def _add(lm: AudioLanguageModel, vector: torch.Tensor) -> Iterator[None]:
    """Add ``vector`` at the last position of every decoder layer's output, on every call."""

    def hook(_module: torch.nn.Module, _args: object, output: torch.Tensor) -> torch.Tensor:
        steered = output.clone()
        steered[:, -1] += vector.to(steered.dtype)
        return steered

    handles = [layer.register_forward_hook(hook) for layer in lm.decoder_layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _generate(lm: AudioLanguageModel, conversations: list[list[Message]]) -> list[str]:
    out = lm.generate(lm.encode(conversations), max_new_tokens=12)
    return lm.decode_batch(out)


def _last_states(lm: AudioLanguageModel, conversations: list[list[Message]]) -> torch.Tensor:
    """[batch, layers, hidden] outputs of every decoder layer at the last position."""
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _args: object, output: torch.Tensor) -> None:
        captured.append(output[:, -1].detach().clone())

    handles = [layer.register_forward_hook(hook) for layer in lm.decoder_layers]
    try:
        with torch.no_grad():
            lm.model(**lm.encode(conversations))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(captured, dim=1)


def test_direction_matches_the_builder(
    planted: AudioLanguageModel, direction: torch.Tensor
) -> None:
    built = build_planted_model()
    assert built.direction.shape == (planted.hidden_size,)
    assert torch.allclose(built.direction, direction, atol=1e-6)
    assert abs(float(direction.norm()) - 1.0) < 1e-6
    assert built.c_range == PLANTED_C_RANGE


def test_plain_prompt_complies(planted: AudioLanguageModel) -> None:
    assert _generate(planted, PROMPTS) == [COMPLIANT_TEXT] * len(PROMPTS)


def test_refusal_instruction_refuses(planted: AudioLanguageModel) -> None:
    with_instruction = [_with_refusal(c) for c in PROMPTS]
    assert _generate(planted, with_instruction) == [REFUSAL_TEXT] * len(PROMPTS)


@pytest.mark.parametrize("c", [PLANTED_C_RANGE[0], 1.0, 4.0, PLANTED_C_RANGE[1]])
def test_adding_c_times_r_flips_every_prompt(
    planted: AudioLanguageModel, direction: torch.Tensor, c: float
) -> None:
    with _add(planted, c * direction):
        assert _generate(planted, PROMPTS) == [REFUSAL_TEXT] * len(PROMPTS)


def test_adding_zero_changes_nothing(planted: AudioLanguageModel) -> None:
    inputs = planted.encode(PROMPTS)
    with torch.no_grad():
        plain = planted.model(**inputs).logits
        with _add(planted, torch.zeros(planted.hidden_size)):
            zero = planted.model(**inputs).logits
            tokens = planted.generate(inputs, max_new_tokens=12)
    assert torch.equal(plain, zero)
    assert planted.decode_batch(tokens) == [COMPLIANT_TEXT] * len(PROMPTS)


def test_orthogonal_push_never_refuses(
    planted: AudioLanguageModel, direction: torch.Tensor
) -> None:
    # Other directions may derail the phrase chain, but only r produces the refusal.
    for seed in range(3):
        other = torch.randn(planted.hidden_size, generator=torch.Generator().manual_seed(seed))
        other -= (other @ direction) * direction
        with _add(planted, 4.0 * other / other.norm()):
            assert REFUSAL_TEXT not in _generate(planted, PROMPTS)


def test_instruction_moves_states_along_r_from_the_planted_layer(
    planted: AudioLanguageModel, direction: torch.Tensor
) -> None:
    base = _last_states(planted, PROMPTS)
    refusal = _last_states(planted, [_with_refusal(c) for c in PROMPTS])
    diff = refusal - base  # [batch, layers, hidden]
    assert float(diff[:, :PLANTED_LAYER].abs().max()) == 0.0
    along = diff[:, PLANTED_LAYER:] @ direction
    assert float(along.min()) > 6.0  # about 8 units of r
    residual = diff[:, PLANTED_LAYER:] - along[..., None] * direction
    assert float((residual @ direction).abs().max()) < 1e-5
    # Benign variation (audio-dependent) exists and is orthogonal to r, so a benign principal
    # subspace learnt from these states leaves r intact.
    centred = base[:, PLANTED_LAYER:] - base[:, PLANTED_LAYER:].mean(0)
    assert float(centred.norm()) > 0.1
    assert float((centred @ direction).abs().max()) < 1e-5


def test_cache_dir_is_reused(planted: AudioLanguageModel, tmp_path: Path) -> None:
    from sarsteer_guard.models import builtin_model_dir

    directory = builtin_model_dir("tiny-planted")
    again = load_model(str(directory))
    assert again.fingerprint == planted.fingerprint
    conv = PROMPTS[:1]
    assert _generate(again, conv) == [COMPLIANT_TEXT]
