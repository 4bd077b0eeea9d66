"""Qwen2-Audio adapter (primary target: Qwen/Qwen2-Audio-7B-Instruct)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

import torch

from .base import AudioLanguageModel, language_model_layers

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["Qwen2AudioLM"]


class Qwen2AudioLM(AudioLanguageModel):
    """``Qwen2AudioForConditionalGeneration`` with its own processor and chat template."""

    model_types = frozenset({"qwen2_audio"})

    @classmethod
    def load(
        cls,
        path: str,
        *,
        model_id: str,
        config: Any,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Self:
        """Load processor and weights with ``from_pretrained``, move to ``device``, eval mode."""
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        processor: Any = AutoProcessor.from_pretrained(path)  # type: ignore[no-untyped-call]  # untyped in transformers
        model: Any = Qwen2AudioForConditionalGeneration.from_pretrained(
            path, config=config, dtype=dtype
        )
        model.to(device).eval()
        return cls(model_id=model_id, model=model, processor=processor)

    def _decoder_layers(self, model: PreTrainedModel) -> Sequence[torch.nn.Module]:
        return language_model_layers(model, "Qwen2-Audio")
