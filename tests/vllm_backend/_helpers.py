"""Shared fixtures for the vLLM backend tests: a tiny checkpoint, conversations, references."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from sarsteer_guard.models import Message, load_model
from sarsteer_guard.models.base import AudioLanguageModel
from sarsteer_guard.steering import LastPositionCapture, SteeringHooks
from sarsteer_guard.testing.vllm_models import write_tiny_vllm_checkpoint

T = TypeVar("T")

PROMPTS = (
    "Please generate detailed steps for the question in the audio.",
    "Describe this sound.",
    "Translate it to English.",
    "What is the weather like today?",
    "Tell me how to pick a lock.",
    "Summarize the question and answer it.",
    "hello",
    "Can you explain why the sky is blue?",
)


def checkpoint(root: Path) -> Path:
    """The tiny head-64 Qwen2-Audio written once per test module."""
    return write_tiny_vllm_checkpoint(root / "tiny-vllm")


def clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


def conversations() -> list[list[Message]]:
    """Eight turns: different audio lengths and prompts, one with history, one text-only."""
    convs: list[list[Message]] = [
        [Message("user", PROMPTS[i], clip(0.5 + 0.25 * i, i))] for i in range(6)
    ]
    convs.append(
        [
            Message("user", "hi", clip(0.4, 11)),
            Message("assistant", "A sound."),
            Message("user", PROMPTS[6], clip(0.7, 12)),
        ]
    )
    convs.append([Message("user", PROMPTS[7])])
    return convs


def run(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> T:
    return loop.run_until_complete(coro)


def reference_lm(path: Path) -> AudioLanguageModel:
    return load_model(str(path), dtype="float32")


def hf_tokens(
    lm: AudioLanguageModel,
    conversation: Sequence[Message],
    max_new: int,
    vectors: torch.Tensor | None = None,
    alpha: float = 0.0,
    *,
    prompt_only: bool = False,
    readout_layer: int | None = None,
) -> tuple[list[int], float | None]:
    """Greedy tokens (cut after the first end token) and readout on the transformers path."""
    inputs = lm.encode([list(conversation)])
    with torch.inference_mode():
        if vectors is None:
            out = lm.generate(inputs, max_new_tokens=max_new)
            readout = None
        else:
            hooks = SteeringHooks(
                lm.decoder_layers,
                vectors,
                alpha=alpha,
                prompt_only=prompt_only,
                readout_layer=readout_layer,
            )
            with hooks:
                out = lm.generate(inputs, max_new_tokens=max_new)
                values = hooks.readout()
            readout = None if values is None else float(values[0])
    return cut(out[0].tolist(), eos_ids(lm)), readout


def hf_states(lm: AudioLanguageModel, conversation: Sequence[Message]) -> torch.Tensor:
    """Last-prompt-position state of every layer, ``[layers, hidden]``, transformers path."""
    inputs = lm.encode([list(conversation)])
    with torch.inference_mode(), LastPositionCapture(lm.decoder_layers) as cap:
        lm.model(**inputs)
        return cap.states[0]


def eos_ids(lm: AudioLanguageModel) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def cut(tokens: Sequence[int], eos: set[int]) -> list[int]:
    """Tokens up to (excluding) the first end token."""
    out: list[int] = []
    for token in tokens:
        if token in eos:
            break
        out.append(int(token))
    return out


def vectors_for(lm: AudioLanguageModel, seed: int = 7) -> torch.Tensor:
    """Random directions scaled to the model's own state norms: alpha 0.5 changes outputs."""
    norms = hf_states(lm, conversations()[0]).norm(dim=1, keepdim=True)
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(lm.num_layers, lm.hidden_size, generator=generator)
    return v / v.norm(dim=1, keepdim=True) * norms
