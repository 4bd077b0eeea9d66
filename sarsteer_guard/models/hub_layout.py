"""Write checkpoints in the Hugging Face hub's weight layout, which every engine reads.

transformers 5.x keeps Qwen2-Audio's text model at ``model.language_model.*`` in memory and its
``save_pretrained`` writes whatever layout the installed version uses (5.19 wrote
``language_model.model.model.*``), which vLLM refuses. Real checkpoints such as
Qwen/Qwen2-Audio-7B-Instruct are stored as ``language_model.model.layers.N...``,
``language_model.lm_head.weight``, ``audio_tower.*`` and ``multi_modal_projector.*``; both
transformers (through its checkpoint conversion) and vLLM load that layout. Built-in and test
models are written in it so they go through the same loading code as a real checkpoint.

Invariant: :func:`save_hub_layout` writes every tensor of the model exactly once, under its hub
name, in the model's dtype; an unknown key is an error, never silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sarsteer_guard.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["HUB_PREFIXES", "hub_key", "hub_state_dict", "save_hub_layout"]

#: In-memory prefix (transformers 5.x) -> hub prefix, tried in order (longest first).
HUB_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.language_model.", "language_model.model."),
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
    # Older in-memory layouts already match the hub.
    ("language_model.", "language_model."),
    ("audio_tower.", "audio_tower."),
    ("multi_modal_projector.", "multi_modal_projector."),
)


def hub_key(key: str) -> str:
    """The hub name of one in-memory parameter name.

    Raises:
        ModelLoadError: the key belongs to no known part of a Qwen2-Audio model.
    """
    for memory, hub in HUB_PREFIXES:
        if key.startswith(memory):
            return hub + key[len(memory) :]
    raise ModelLoadError(
        f"cannot map weight {key!r} to the hub layout; only Qwen2-Audio models are supported"
    )


def hub_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of ``model`` under its hub name, contiguous, on the CPU (tied weights once)."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for key, tensor in model.state_dict().items():
        name = hub_key(key)
        ident = tensor.data_ptr()
        if ident in seen and tensor.numel() > 0:  # tied embeddings: stored once, like the hub
            continue
        seen[ident] = name
        if name in out:
            raise ModelLoadError(f"two weights map to {name!r}; the model layout is unexpected")
        out[name] = tensor.detach().to("cpu").contiguous().clone()
    return out


def save_hub_layout(model: PreTrainedModel, processor: Any, directory: str | Path) -> Path:
    """Save ``model`` (Qwen2-Audio) and ``processor`` in the hub layout; return the directory.

    Writes ``model.safetensors`` (hub key names), ``config.json`` (with ``architectures``),
    ``generation_config.json`` and the processor files. The result loads with both
    ``load_model(directory)`` (transformers) and vLLM.
    """
    from safetensors.torch import save_file

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    tensors = hub_state_dict(model)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    config.architectures = [type(model).__name__]
    config.save_pretrained(target)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(target)
    processor.save_pretrained(target)
    _check_written(target, tensors)
    return target


def _check_written(target: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Fail if the config on disk lost the architecture name loaders dispatch on."""
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    if not config.get("architectures"):
        raise ModelLoadError(f"{target}/config.json has no architectures; rewrite the checkpoint")
    if not any(key.startswith("language_model.model.layers.") for key in tensors):
        raise ModelLoadError("no decoder-layer weights were written; the model is not Qwen2-Audio")
