"""Best-effort adapter for other transformers audio-language models.

Resolves the class from ``config.architectures`` and uses ``AutoProcessor`` plus the processor's
chat template. Families whose processors need more than ``processor(text=, audio=)`` should get a
dedicated adapter instead.
"""

from __future__ import annotations

from typing import Any, Self

import torch

from sarsteer_guard.errors import ModelLoadError, one_line

from .base import AudioLanguageModel

__all__ = ["GenericAudioLM", "resolve_model_class"]

_WHAT_TO_DO = (
    "sarsteer-guard steers generative audio-language models with a text decoder and a chat "
    "template (e.g. Qwen/Qwen2-Audio-7B-Instruct, Qwen/Qwen2.5-Omni-7B)"
)


def resolve_model_class(config: Any) -> type[Any]:
    """The transformers class named in ``config.architectures`` (no remote code, ever).

    Raises:
        ModelLoadError: when the config names no class or one this transformers lacks.
    """
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type):
            return cls
    model_type = getattr(config, "model_type", "?")
    shown = ", ".join(names) if names else f"model_type {model_type!r}"
    raise ModelLoadError(
        f"unsupported model class {shown}: transformers {transformers.__version__} has no such "
        f"class; {_WHAT_TO_DO}"
    )


class GenericAudioLM(AudioLanguageModel):
    """Any transformers audio LM whose processor takes ``text=`` and ``audio=``."""

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
        """Check the class can generate and the processor has audio + a chat template, then load.

        Cheap checks run before the weights are read, so a wrong model fails in seconds.
        """
        from transformers import AutoProcessor

        model_cls = resolve_model_class(config)
        name = model_cls.__name__
        can_generate = getattr(model_cls, "can_generate", None)
        if not callable(can_generate) or not can_generate():
            raise ModelLoadError(
                f"unsupported model class {name}: it cannot generate text; {_WHAT_TO_DO}"
            )
        try:
            processor: Any = AutoProcessor.from_pretrained(path)  # type: ignore[no-untyped-call]  # untyped in transformers
        except (OSError, ValueError, TypeError, ImportError) as exc:
            raise ModelLoadError(
                f"unsupported model class {name}: no usable processor ({one_line(exc)}); "
                f"{_WHAT_TO_DO}"
            ) from exc
        if getattr(processor, "feature_extractor", None) is None:
            raise ModelLoadError(
                f"unsupported model class {name}: its processor takes no audio; {_WHAT_TO_DO}"
            )
        template = getattr(processor, "chat_template", None) or getattr(
            getattr(processor, "tokenizer", None), "chat_template", None
        )
        if not template:
            raise ModelLoadError(
                f"unsupported model class {name}: no chat template (not an instruction-following "
                f"audio LM); {_WHAT_TO_DO}"
            )
        model = model_cls.from_pretrained(path, config=config, dtype=dtype)
        model.to(device).eval()
        return cls(model_id=model_id, model=model, processor=processor)
