"""The adapter contract every audio-language model family implements.

An adapter turns conversations of :class:`Message` into model inputs whose last position is the
real last token of every row (left padding, generation prompt added): that position is where
SARSteer captures and steers, so a pad token there would silently break both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np
import numpy.typing as npt
import torch

from sarsteer_guard.errors import AudioError, ModelLoadError
from sarsteer_guard.log import get_logger

if TYPE_CHECKING:
    from transformers import BatchFeature, PreTrainedModel, ProcessorMixin

__all__ = [
    "AudioLanguageModel",
    "Message",
    "ModelFacts",
    "Role",
    "config_fingerprint",
    "find_decoder_layers",
]

_log = get_logger(__name__)

Role = Literal["system", "user", "assistant"]
_ROLES = ("system", "user", "assistant")

# Config keys that describe how a checkpoint was stored or run, not what it computes.
_NON_ARCHITECTURAL_KEYS = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "_commit_hash",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "architectures",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_attn_implementation_internal",
        "attn_implementation",
        "_experts_implementation",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "use_return_dict",
    }
)

# Path components that mark a non-text stack (the audio tower also has a list named ``layers``).
_NON_TEXT_PARTS = ("audio", "vision", "visual", "speech", "image", "video", "talker", "token2wav")


@dataclass(frozen=True, eq=False)
class Message:
    """One chat turn. ``audio`` is float32 mono at the model's ``sampling_rate``.

    Equality is identity (``eq=False``): comparing waveforms element-wise is never what a caller
    means and would make messages unhashable.
    """

    role: Role
    text: str = ""
    audio: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"message role must be one of {_ROLES}, got {self.role!r}")
        if self.audio is not None and self.role != "user":
            raise ValueError(f"only user messages can carry audio, got audio on {self.role!r}")


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the Guard and calibration need to know about a model, with no framework objects.

    Every generation backend reports these for the model it serves; two backends serving the
    same checkpoint must report the same ``fingerprint`` (vector sets are keyed by it).

    Attributes:
        model_id: the name it was loaded as (hub id, directory or built-in name).
        fingerprint: :func:`config_fingerprint` of the model.
        num_layers: text decoder layers (one steering vector per layer).
        hidden_size: width of the text decoder's residual stream.
        sampling_rate: audio rate the model's front end expects.
        is_test_model: a built-in model with random or constructed weights (never guards
            real traffic).
        default_system_prompt: system message the adapter adds to every conversation that
            has none (generation and calibration alike); part of the calibration digest.
    """

    model_id: str
    fingerprint: str
    num_layers: int
    hidden_size: int
    sampling_rate: int
    is_test_model: bool = False
    default_system_prompt: str | None = None


class AudioLanguageModel(ABC):
    """A loaded audio-language model with the operations SARSteer needs.

    Attributes:
        model_id: the name it was loaded as (hub id, directory or built-in name).
        model: the transformers model (eval mode).
        processor: its processor (feature extractor + tokenizer + chat template).
        sampling_rate: audio rate the feature extractor expects.
        decoder_layers: the text decoder's layers, in order: where states are captured/steered.
        num_layers: ``len(decoder_layers)``.
        hidden_size: width of the text decoder's residual stream.
        device: device of the model's parameters.
        dtype: floating dtype of the model's parameters.
        fingerprint: sha256 of the architecture-defining config (see :func:`config_fingerprint`).
        is_test_model: set by the loader for the built-in models (random, constructed or
            organism weights).
        default_system_prompt: system message added to conversations that have none (None:
            the chat template's own default applies). Families set a class default; assign
            the attribute to change it.
    """

    #: The family's system prompt for conversations without one (None: the template's own).
    default_system_prompt: str | None = None
    is_test_model: bool = False

    model_id: str
    model: PreTrainedModel
    processor: ProcessorMixin
    sampling_rate: int
    decoder_layers: Sequence[torch.nn.Module]
    num_layers: int
    hidden_size: int
    device: torch.device
    dtype: torch.dtype
    fingerprint: str

    def __init__(self, *, model_id: str, model: PreTrainedModel, processor: ProcessorMixin) -> None:
        self.model_id = model_id
        self.model = model
        self.processor = processor
        self.sampling_rate = int(processor.feature_extractor.sampling_rate)
        self.decoder_layers = tuple(self._decoder_layers(model))
        self.num_layers = len(self.decoder_layers)
        self.hidden_size = int(model.config.get_text_config().hidden_size)
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.fingerprint = config_fingerprint(model)
        self._max_audio_samples = int(
            getattr(processor.feature_extractor, "n_samples", 0) or 0
        )  # longer clips are cut by the feature extractor: warn instead of failing silently
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        self._special_tokens = _control_tokens(tokenizer)
        _configure_generation(model, tokenizer)

    @property
    def facts(self) -> ModelFacts:
        """The model facts backends and calibration report (no framework objects)."""
        return ModelFacts(
            model_id=self.model_id,
            fingerprint=self.fingerprint,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            sampling_rate=self.sampling_rate,
            is_test_model=self.is_test_model,
            default_system_prompt=self.default_system_prompt,
        )

    # ----------------------------------------------------------------- loading
    @classmethod
    @abstractmethod
    def load(
        cls,
        path: str,
        *,
        model_id: str,
        config: Any,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Self:
        """Load weights and processor from a local directory or hub id (I/O lives here)."""

    def _decoder_layers(self, model: PreTrainedModel) -> Sequence[torch.nn.Module]:
        """The text decoder's layer list; families override when they know exactly where it is."""
        return find_decoder_layers(model)

    # ------------------------------------------------------------- inference
    def encode(self, conversations: Sequence[Sequence[Message]]) -> BatchFeature:
        """Render, tokenize and featurize a batch of conversations.

        Returns a left-padded ``BatchFeature`` on :attr:`device` (floating tensors in
        :attr:`dtype`) with the generation prompt appended, so ``[:, -1]`` is every row's real
        last token. Multi-turn history (user audio + assistant text) is rendered in order.
        """
        if not conversations:
            raise ValueError("encode needs at least one conversation")
        rows: list[BatchFeature] = []
        for conversation in conversations:
            chat, clips = self._chat(conversation)
            rows.append(self._process([self._render(chat)], clips))
        batch = rows[0] if len(rows) == 1 else self._collate(rows)
        mask = batch.get("attention_mask")
        if mask is not None and not bool(mask[:, -1].all()):
            raise RuntimeError(f"{type(self).__name__} produced right-padded inputs; expected left")
        return batch.to(device=self.device, dtype=self.dtype)

    def generate(
        self, inputs: Mapping[str, Any], *, max_new_tokens: int, **kw: Any
    ) -> torch.Tensor:
        """Generate (greedy unless ``do_sample=True`` is passed); return new token ids [B, T].

        Extra keyword arguments (``streamer``, ``stopping_criteria``, sampling settings...) go to
        ``model.generate`` unchanged.
        """
        kw.setdefault("do_sample", False)
        # Compiled decode steps skip forward hooks added after compilation: steering would be
        # silently dropped. Steering is a safety control, so generation stays eager.
        kw.setdefault("disable_compile", True)
        model: Any = self.model  # nn.Module.__getattr__ hides GenerationMixin.generate from mypy
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, **kw)
        sequences: torch.Tensor = out if isinstance(out, torch.Tensor) else out.sequences
        return sequences[:, inputs["input_ids"].shape[1] :]

    def decode(self, token_ids: torch.Tensor | Sequence[int]) -> str:
        """Decode one sequence of token ids to text, dropping special and pad tokens."""
        if isinstance(token_ids, torch.Tensor):
            if token_ids.dim() == 2 and token_ids.shape[0] == 1:
                token_ids = token_ids[0]
            if token_ids.dim() != 1:
                raise ValueError(f"decode takes one sequence, got shape {tuple(token_ids.shape)}")
            token_ids = token_ids.tolist()
        text: str = self.processor.tokenizer.decode(list(token_ids), skip_special_tokens=True)
        return text

    def decode_batch(self, token_ids: torch.Tensor) -> list[str]:
        """Decode each row of a [B, T] tensor (as :meth:`decode`)."""
        return [self.decode(row) for row in token_ids]

    # ------------------------------------------------------------- internals
    def _chat(
        self, conversation: Sequence[Message]
    ) -> tuple[list[dict[str, Any]], list[npt.NDArray[np.float32]]]:
        """Convert messages to the processor's chat format; audio items come before their text."""
        if not conversation:
            raise ValueError("a conversation needs at least one message")
        chat: list[dict[str, Any]] = []
        clips: list[npt.NDArray[np.float32]] = []
        system = self.default_system_prompt
        if system and not any(message.role == "system" for message in conversation):
            conversation = [Message(role="system", text=system), *conversation]
        for message in conversation:
            self._check_text(message.text)
            content: list[dict[str, Any]] = []
            if message.audio is not None:
                clips.append(self._check_audio(message.audio))
                content.append({"type": "audio", "audio": f"<audio {len(clips)}>"})
            if message.text or not content:
                content.append({"type": "text", "text": message.text})
            chat.append({"role": message.role, "content": content})
        return chat, clips

    def _render(self, chat: list[dict[str, Any]]) -> str:
        rendered: str = self.processor.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=False
        )
        return rendered

    def _process(self, texts: list[str], audios: list[npt.NDArray[np.float32]]) -> BatchFeature:
        batch: BatchFeature = self.processor(
            text=texts,
            audio=audios or None,
            sampling_rate=self.sampling_rate,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        return batch

    def _collate(self, rows: list[BatchFeature]) -> BatchFeature:
        """Left-pad token rows and stack per-clip audio features from row-wise processing.

        Rows are processed one by one because the Whisper front end featurizes a batch of
        clips about 3x slower per clip than one clip at a time on a CPU (one huge STFT);
        the result equals a joint processor call.
        """
        from transformers import BatchFeature

        tokenizer: Any = getattr(self.processor, "tokenizer", self.processor)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id or 0
        width = max(int(row["input_ids"].shape[1]) for row in rows)
        data: dict[str, torch.Tensor] = {}
        for key, fill in (("input_ids", int(pad_id)), ("attention_mask", 0)):
            if all(key in row for row in rows):
                data[key] = torch.cat(
                    [
                        torch.nn.functional.pad(
                            row[key], (width - row[key].shape[1], 0), value=fill
                        )
                        for row in rows
                    ]
                )
        keys = {key for row in rows for key in row if key not in data}
        for key in sorted(keys):
            parts = [row[key] for row in rows if key in row]
            if (
                any(not isinstance(p, torch.Tensor) for p in parts)
                or len({tuple(p.shape[1:]) for p in parts}) != 1
            ):
                raise ValueError(f"cannot batch processor output {key!r} row by row")
            data[key] = torch.cat(parts)
        return BatchFeature(data=data)

    def _check_text(self, text: str) -> None:
        # Control tokens in text would forge turns or audio placeholders: refuse them outright.
        for token in self._special_tokens:
            if token in text:
                raise ValueError(f"message text contains the control token {token!r}; remove it")

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
        if self._max_audio_samples and clip.size > self._max_audio_samples:
            _log.warning(
                "audio_truncated",
                model=self.model_id,
                seconds=round(clip.size / self.sampling_rate, 2),
                max_seconds=round(self._max_audio_samples / self.sampling_rate, 2),
            )
        return clip


def find_decoder_layers(model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    """Locate the text decoder's ``ModuleList`` of layers, never the audio or vision tower's.

    Tries ``get_decoder().layers`` and the usual attribute paths, rejecting any list whose
    qualified name runs through an audio/vision/speech stack.

    Raises:
        ModelLoadError: naming the model class when no text decoder layers are found.
    """
    names = {id(module): name for name, module in model.named_modules()}
    candidates: list[Any] = []
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        with contextlib.suppress(AttributeError, NotImplementedError, ValueError):
            candidates.append(getattr(get_decoder(), "layers", None))
    for path in (
        "model.language_model.layers",
        "language_model.layers",
        "language_model.model.layers",
        "thinker.model.language_model.layers",
        "model.text_model.layers",
        "text_model.layers",
        "model.layers",
        "layers",
        "transformer.h",
    ):
        candidates.append(_get_path(model, path))
    for layers in candidates:
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            qualified = names.get(id(layers), "")
            if not _is_non_text(qualified):
                return list(layers)
    raise ModelLoadError(
        f"cannot find the text decoder layers of {type(model).__name__}; "
        "it is not a supported audio-language model (use Qwen2-Audio or Qwen2.5-Omni)"
    )


def language_model_layers(model: torch.nn.Module, family: str) -> list[torch.nn.Module]:
    """``model.model.language_model.layers``: the text stack of Qwen-style audio LMs.

    The audio tower (``model.model.audio_tower.layers``) also has ``layers``, so the path is
    explicit rather than found by name.
    """
    layers = getattr(getattr(getattr(model, "model", None), "language_model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ModelLoadError(
            f"{type(model).__name__} has no model.language_model.layers; "
            f"this transformers version lays out {family} differently (use transformers 5.x)"
        )
    return list(layers)


def find_audio_encoder(model: torch.nn.Module) -> torch.nn.Module | None:
    """The audio encoder module (``audio_tower`` and kin), shallowest first; None if absent."""
    best: tuple[int, torch.nn.Module] | None = None
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("audio_tower", "audio_encoder", "audio_model"):
            depth = name.count(".")
            if best is None or depth < best[0]:
                best = (depth, module)
    return None if best is None else best[1]


def config_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model class, its config (minus storage/runtime keys) and a weight sample.

    Steering vectors are only valid for the weights they were calibrated on, so two fine-tunes
    of one architecture must not share a fingerprint. The weight sample (a few embedding and
    output rows plus norm weights) is rounded to bfloat16 before hashing, so the same checkpoint
    loaded in float32 or bfloat16, from the hub or a directory, gives the same fingerprint.
    """
    config = getattr(model, "config", None)
    raw = config.to_dict() if config is not None else {}
    payload = {"class": type(model).__name__, "config": _strip(raw)}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(blob.encode("utf-8"))
    digest.update(_weight_sample_bytes(model))
    return digest.hexdigest()


def _weight_sample_bytes(model: torch.nn.Module) -> bytes:
    """A small, dtype-independent sample of the text model's weights (one host copy)."""
    parts: list[torch.Tensor] = []
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    with torch.no_grad():
        for getter in (get_in, get_out):
            module = getter() if callable(getter) else None
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() == 2:
                rows = torch.linspace(0, weight.shape[0] - 1, 8).long().to(weight.device)
                parts.append(weight.index_select(0, rows).reshape(-1))
        layers = find_decoder_layers(model)
        for layer in (layers[0], layers[-1]):
            for tensor in layer.parameters():
                if tensor.dim() == 1:
                    parts.append(tensor.reshape(-1))
                    break
        if not parts:
            return b""
        sample = torch.cat([p.detach().to(torch.bfloat16).float().cpu() for p in parts])
    return sample.numpy().tobytes()


def _strip(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            str(k): _strip(v) for k, v in value.items() if str(k) not in _NON_ARCHITECTURAL_KEYS
        }
    if isinstance(value, list | tuple):
        return [_strip(v) for v in value]
    return value


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _is_non_text(qualified: str) -> bool:
    parts = qualified.lower().split(".")
    return any(marker in part for part in parts for marker in _NON_TEXT_PARTS)


def _configure_generation(model: PreTrainedModel, tokenizer: Any) -> None:
    """Set pad/eos on the generation config and make greedy the default (no sampling warnings)."""
    gen = model.generation_config
    if gen is None:
        return
    eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    ids = _as_id_list(eos)
    im_end = (
        tokenizer.convert_tokens_to_ids("<|im_end|>")
        if "<|im_end|>" in tokenizer.get_vocab()
        else None
    )
    if isinstance(im_end, int) and im_end not in ids:
        ids.append(im_end)  # chat models end a turn with <|im_end|> even if the config forgot it
    if ids:
        gen.eos_token_id = ids if len(ids) > 1 else ids[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else gen.pad_token_id
    gen.pad_token_id = pad if pad is not None else (ids[0] if ids else None)
    gen.do_sample = False
    for name in ("temperature", "top_p", "top_k"):
        if getattr(gen, name, None) is not None:
            setattr(
                gen, name, None
            )  # sampling knobs only warn under greedy; callers pass their own


def _control_tokens(tokenizer: Any) -> tuple[str, ...]:
    """Special tokens plus added special tokens (Qwen registers its audio markers as the latter)."""
    tokens = {str(t) for t in getattr(tokenizer, "all_special_tokens", ()) if t}
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False) and str(added):
            tokens.add(str(added))
    return tuple(sorted(tokens))


def _as_id_list(value: int | Iterable[int] | None) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]
