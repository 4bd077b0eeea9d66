"""Qwen2.5-Omni adapter: the thinker only (text output; the talker is never loaded).

``Qwen2_5OmniProcessor`` needs torchvision for its video processor even for audio-only input, so
this adapter builds the audio path itself: the checkpoint's Whisper feature extractor, tokenizer
and chat template wrapped in a ``Qwen2AudioProcessor``, which expands ``<|AUDIO|>`` with the same
length formula as the Omni processor (``((n - 1) // 2 + 1 - 2) // 2 + 1`` tokens for ``n`` frames).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import torch

from sarsteer_guard.errors import ModelLoadError

from .base import AudioLanguageModel, language_model_layers

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["OMNI_SYSTEM_PROMPT", "Qwen2_5OmniThinkerLM", "build_omni_audio_processor"]

#: Qwen2.5-Omni's official system prompt. The model card asks for it, and the SARSteer
#: reference sends it with every request (calibration and generation).
OMNI_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech."
)


class Qwen2_5OmniThinkerLM(AudioLanguageModel):
    """``Qwen2_5OmniThinkerForConditionalGeneration`` from a full Omni checkpoint or a thinker.

    Conversations without a system message get :data:`OMNI_SYSTEM_PROMPT` (as the reference
    does); set ``default_system_prompt`` (or pass it to ``load_model``) to change that.
    """

    model_types = frozenset({"qwen2_5_omni", "qwen2_5_omni_thinker"})
    default_system_prompt: str | None = OMNI_SYSTEM_PROMPT

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
        """Load the thinker's weights only (``thinker.*`` keys of a full checkpoint)."""
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        processor = build_omni_audio_processor(path)
        kwargs: dict[str, Any] = {}
        if config.model_type == "qwen2_5_omni":
            config = config.thinker_config
            kwargs["key_mapping"] = {r"^thinker\.": ""}  # talker/token2wav keys are left unused
        model: Any = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
            path, config=config, dtype=dtype, **kwargs
        )
        model.to(device).eval()
        return cls(model_id=model_id, model=model, processor=processor)

    def _decoder_layers(self, model: PreTrainedModel) -> Sequence[torch.nn.Module]:
        return language_model_layers(model, "Qwen2.5-Omni")


def build_omni_audio_processor(path: str) -> Any:
    """Feature extractor + tokenizer + chat template of an Omni checkpoint, without torchvision."""
    from transformers import AutoTokenizer, Qwen2AudioProcessor, WhisperFeatureExtractor

    feature_extractor = WhisperFeatureExtractor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = tokenizer.chat_template or _read_chat_template(path)
    if not template:
        raise ModelLoadError(
            f"no chat template found in {path}; it is not a Qwen2.5-Omni checkpoint"
        )
    processor_cls: Any = Qwen2AudioProcessor  # its __init__ is untyped in transformers
    return processor_cls(
        feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=template
    )


def _read_chat_template(path: str) -> str | None:
    """The processor-level template (``chat_template.jinja`` or ``chat_template.json``)."""
    from transformers.utils.hub import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            found = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
        except OSError:
            found = None
        if found is None:
            continue
        text = Path(found).read_text(encoding="utf-8")
        if name.endswith(".json"):
            value = json.loads(text).get("chat_template")
            return str(value) if value else None
        return text
    return None
