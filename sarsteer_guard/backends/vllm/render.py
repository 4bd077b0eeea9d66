"""Conversations -> (prompt text, audio clips), rendered exactly as the transformers adapter does.

The transformers adapter (``models.base.AudioLanguageModel``) renders a conversation with the
processor's chat template (an audio item before its text in each message, generation prompt
appended) and feeds the clips to the processor. vLLM takes the same rendered text with the
clips as multimodal data and expands each audio placeholder itself, so both engines see the
same token ids (a test checks it). Control tokens in message text are refused, as there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sarsteer_guard.errors import AudioError
from sarsteer_guard.models.base import Message

__all__ = ["ChatRenderer", "RenderedPrompt"]


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """A prompt ready for vLLM: text with audio placeholders and the clips in order."""

    text: str
    audios: tuple[npt.NDArray[np.float32], ...]


class ChatRenderer:
    """Renders conversations with a checkpoint's own processor (chat template, sampling rate)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.sampling_rate = int(processor.feature_extractor.sampling_rate)
        self._max_samples = int(getattr(processor.feature_extractor, "n_samples", 0) or 0)
        tokenizer = processor.tokenizer
        tokens = {str(t) for t in getattr(tokenizer, "all_special_tokens", ()) if t}
        for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
            if getattr(added, "special", False) and str(added):
                tokens.add(str(added))
        self._control = tuple(sorted(tokens))

    @classmethod
    def from_pretrained(cls, path: str) -> ChatRenderer:
        """Load the processor of a checkpoint directory."""
        from transformers import AutoProcessor

        processor: Any = AutoProcessor.from_pretrained(path)  # type: ignore[no-untyped-call]  # untyped in transformers
        return cls(processor)

    def render(self, conversation: Sequence[Message]) -> RenderedPrompt:
        """Chat-template text (generation prompt added) and the conversation's clips in order."""
        if not conversation:
            raise ValueError("a conversation needs at least one message")
        chat: list[dict[str, Any]] = []
        clips: list[npt.NDArray[np.float32]] = []
        for message in conversation:
            for token in self._control:
                if token in message.text:
                    raise ValueError(
                        f"message text contains the control token {token!r}; remove it"
                    )
            content: list[dict[str, Any]] = []
            if message.audio is not None:
                clips.append(self._check_audio(message.audio))
                content.append({"type": "audio", "audio": f"<audio {len(clips)}>"})
            if message.text or not content:
                content.append({"type": "text", "text": message.text})
            chat.append({"role": message.role, "content": content})
        text: str = self.processor.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=False
        )
        return RenderedPrompt(text=text, audios=tuple(clips))

    def _check_audio(self, audio: Any) -> npt.NDArray[np.float32]:
        clip = np.asarray(audio, dtype=np.float32)
        if clip.ndim != 1:
            raise AudioError(
                f"audio must be mono 1-D float32 at {self.sampling_rate} Hz, got shape {clip.shape}"
            )
        if clip.size == 0:
            raise AudioError("audio clip is empty; send at least a few milliseconds of audio")
        if not np.isfinite(clip).all():
            raise AudioError("audio contains NaN or infinite samples; check the decoder/resampler")
        if self._max_samples and clip.size > self._max_samples:
            clip = clip[: self._max_samples]  # the feature extractor would cut it the same way
        return clip
