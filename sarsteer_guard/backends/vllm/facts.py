"""Model facts for a checkpoint served by vLLM, computed without loading it into transformers.

Vector sets are checked against the model's fingerprint (``models.base.config_fingerprint``), so
the vLLM backend must report the *same* fingerprint as ``load_model(dir)`` for the same
checkpoint, or sets calibrated on one engine would be refused on the other. This builds the
transformers model on the ``meta`` device (no memory), gives real values only to the few
parameters the fingerprint samples (read from the checkpoint's safetensors files) and runs the
one fingerprint function on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sarsteer_guard.errors import ModelLoadError
from sarsteer_guard.models.base import config_fingerprint, find_decoder_layers
from sarsteer_guard.models.hub_layout import hub_key

__all__ = ["ModelFacts", "read_facts"]


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the Guard needs to know about the served model."""

    model_id: str
    fingerprint: str
    num_layers: int
    hidden_size: int
    sampling_rate: int
    architecture: str


def read_facts(path: str | Path, *, model_id: str | None = None) -> ModelFacts:
    """Facts of the checkpoint directory ``path`` (config, processor and safetensors files)."""
    from transformers import AutoConfig, AutoFeatureExtractor

    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory} has no config.json; pass a checkpoint directory")
    config: Any = AutoConfig.from_pretrained(str(directory))
    model = _meta_model(config)
    _materialise_sampled(model, directory)
    features: Any = AutoFeatureExtractor.from_pretrained(str(directory))  # type: ignore[no-untyped-call]  # untyped in transformers
    text = config.get_text_config()
    return ModelFacts(
        model_id=model_id or str(directory),
        fingerprint=config_fingerprint(model),
        num_layers=int(text.num_hidden_layers),
        hidden_size=int(text.hidden_size),
        sampling_rate=int(features.sampling_rate),
        architecture=type(model).__name__,
    )


def _meta_model(config: Any) -> torch.nn.Module:
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise ModelLoadError(
            f"config architectures {names} name no transformers class; rewrite the checkpoint"
        )
    with torch.device("meta"):
        model: torch.nn.Module = cls(config)
    return model


def _sampled_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters ``config_fingerprint`` reads (mirrors its weight sample)."""
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    wanted: list[str] = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter)()
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            wanted.append(names[id(weight)])
    layers = find_decoder_layers(model)
    for layer in (layers[0], layers[-1]):
        for tensor in layer.parameters():
            if tensor.dim() == 1:
                wanted.append(names[id(tensor)])
                break
    return wanted


def _materialise_sampled(model: torch.nn.Module, directory: Path) -> None:
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    index: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118  # safe_open is not a mapping
                index[key] = file
    for name in _sampled_names(model):
        key = hub_key(name)
        if key not in index:
            raise ModelLoadError(f"{directory} has no weight {key!r}; the checkpoint is incomplete")
        with safe_open(str(index[key]), "pt") as handle:
            tensor = handle.get_tensor(key)
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)
