"""A tiny random Qwen2-Audio checkpoint that both vLLM and transformers load.

vLLM's CPU attention supports head sizes such as 64 (it rejects the built-in ``tiny`` model's
16), and it reads only the hub weight layout. This builder keeps the built-in tokenizer,
processor and chat template and widens the text model to two heads of 64.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sarsteer_guard.models.builtin import _generation_config, build_tiny_processor, tiny_config
from sarsteer_guard.models.hub_layout import save_hub_layout

__all__ = ["TINY_VLLM_HEAD_DIM", "build_tiny_vllm_model", "write_tiny_vllm_checkpoint"]

#: Attention head size of the tiny vLLM model (a size vLLM's CPU kernels support).
TINY_VLLM_HEAD_DIM = 64


def build_tiny_vllm_model(seed: int = 0, *, layers: int = 4) -> tuple[Any, Any]:
    """Random-weight Qwen2-Audio (text: ``layers`` x 128 wide, 2 heads of 64, GQA 2:1).

    Same seed, same weights in any process; the global RNG is left as it was.
    """
    from transformers import Qwen2AudioForConditionalGeneration

    processor = build_tiny_processor()
    config = tiny_config(processor.tokenizer)
    text: Any = config.text_config
    text.hidden_size = 2 * TINY_VLLM_HEAD_DIM
    text.num_attention_heads = 2
    text.num_key_value_heads = 1
    text.intermediate_size = 256
    text.num_hidden_layers = layers
    text.layer_types = ["full_attention"] * layers
    text.max_window_layers = layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any = Qwen2AudioForConditionalGeneration(config)
    model.generation_config = _generation_config(processor.tokenizer)
    return model.eval(), processor


def write_tiny_vllm_checkpoint(directory: str | Path, seed: int = 0, *, layers: int = 4) -> Path:
    """Build the tiny model and save it in the hub layout under ``directory``; return it."""
    model, processor = build_tiny_vllm_model(seed, layers=layers)
    return save_hub_layout(model, processor, directory)
