"""The hub weight layout: what vLLM and real checkpoints use, loadable by transformers too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sarsteer_guard.errors import ModelLoadError
from sarsteer_guard.models import Message, load_model
from sarsteer_guard.models.hub_layout import hub_key
from sarsteer_guard.testing.vllm_models import (
    TINY_VLLM_HEAD_DIM,
    build_tiny_vllm_model,
    write_tiny_vllm_checkpoint,
)


def test_tiny_vllm_checkpoint_is_in_the_hub_layout_and_loads_in_transformers(
    tmp_path: Path,
) -> None:
    path = write_tiny_vllm_checkpoint(tmp_path / "tiny")
    with safe_open(str(path / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in keys
    assert "language_model.lm_head.weight" in keys
    assert "multi_modal_projector.linear.weight" in keys
    assert any(k.startswith("audio_tower.") for k in keys)
    assert not any(k.startswith(("model.", "lm_head.")) for k in keys)

    built, _ = build_tiny_vllm_model()
    lm = load_model(str(path), dtype="float32")
    text = lm.model.config.text_config
    assert text.hidden_size // text.num_attention_heads == TINY_VLLM_HEAD_DIM
    loaded = lm.model.state_dict()
    for name, tensor in built.state_dict().items():
        assert torch.equal(loaded[name], tensor), name  # every weight landed where it belongs

    audio = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    inputs = lm.encode([[Message("user", "hello", audio)]])
    with torch.inference_mode():
        ours = lm.model(**inputs).logits
        theirs = built(**inputs).logits
    assert torch.equal(ours, theirs)


def test_hub_key_maps_known_prefixes_and_refuses_others() -> None:
    assert hub_key("model.language_model.norm.weight") == "language_model.model.norm.weight"
    assert hub_key("lm_head.weight") == "language_model.lm_head.weight"
    assert hub_key("model.audio_tower.conv1.bias") == "audio_tower.conv1.bias"
    with pytest.raises(ModelLoadError, match="hub layout"):
        hub_key("thinker.model.layers.0.mlp.up_proj.weight")
