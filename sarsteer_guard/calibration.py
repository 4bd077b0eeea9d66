"""Calibration: run the model over harmful and benign turns and extract SARSteer vectors.

This is the glue between the model (which knows a family's chat format), the capture
hooks and the extraction math (which know nothing of models or files). Each batch is one
capture over ``2 x batch`` rows (every turn as is and with the refusal instruction joined
to its text prompt), returning the last-position state of every decoder layer.

Captures go through a :class:`CaptureSource`: a generation backend (which runs each
capture between its batches, so calibration and serving never share the model at once) or
a loaded :class:`AudioLanguageModel` (captured inline by :func:`capture_last_states`).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from sarsteer_guard._version import __version__
from sarsteer_guard.audio import load_audio
from sarsteer_guard.defaults import (
    DEFAULT_K,
    DEFAULT_LAMBDA,
    DEFAULT_PROMPT,
    DEFAULT_REFUSAL_INSTRUCTION,
    DEFAULT_REFUSAL_SEPARATOR,
)
from sarsteer_guard.errors import ManifestError
from sarsteer_guard.log import get_logger
from sarsteer_guard.manifest import Manifest, ManifestItem
from sarsteer_guard.models.base import (
    AudioLanguageModel,
    Message,
    ModelFacts,
    find_audio_encoder,
)
from sarsteer_guard.steering import LastPositionCapture, SteeringVectors, VectorMeta
from sarsteer_guard.steering.extract import refusal_vectors
from sarsteer_guard.store.keys import VectorSetKey

if TYPE_CHECKING:
    from transformers import BatchFeature

    from sarsteer_guard.vector_request import VectorRequest

log = get_logger(__name__)


@runtime_checkable
class CaptureSource(Protocol):
    """Where calibration gets last-position states: a generation backend or a model adapter."""

    @property
    def facts(self) -> ModelFacts:
        """The model the states come from."""
        ...

    def capture(self, conversations: Sequence[Sequence[Message]]) -> torch.Tensor:
        """Last-position output of every decoder layer per conversation.

        Returns ``[rows, layers, hidden]`` float32 on the CPU, rows in input order, each taken
        at the row's real last token (the generation prompt included), unsteered.
        """
        ...


@dataclass(frozen=True, slots=True)
class CalibrationConfig:
    """What the vectors depend on (besides the model and the calibration turns)."""

    prompt: str = DEFAULT_PROMPT
    refusal_instruction: str = DEFAULT_REFUSAL_INSTRUCTION
    k: int = DEFAULT_K
    lam: float = DEFAULT_LAMBDA
    batch_size: int = 8
    text_only: bool = False
    refusal_separator: str = DEFAULT_REFUSAL_SEPARATOR

    @classmethod
    def from_request(cls, request: VectorRequest, *, batch_size: int = 8) -> CalibrationConfig:
        """The calibration a (non-stored) vector request asks for."""
        return cls(
            prompt=request.prompt,
            refusal_instruction=request.refusal_instruction,
            k=request.k,
            lam=request.lam,
            batch_size=batch_size,
            text_only=request.text_only,
            refusal_separator=request.refusal_separator,
        )


@dataclass(frozen=True)
class Activations:
    """Last-position states of every decoder layer, each ``[N, layers, hidden]`` float32."""

    harmful_base: torch.Tensor
    harmful_refusal: torch.Tensor
    benign_base: torch.Tensor
    benign_refusal: torch.Tensor

    def save(self, path: str | Path) -> None:
        """Write the four tensors as safetensors (float32), for audits and recomputation."""
        from safetensors.torch import save_file

        save_file(
            {
                "harmful_base": self.harmful_base.contiguous(),
                "harmful_refusal": self.harmful_refusal.contiguous(),
                "benign_base": self.benign_base.contiguous(),
                "benign_refusal": self.benign_refusal.contiguous(),
            },
            str(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> Activations:
        """Read tensors written by :meth:`save`."""
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return cls(**{name: tensors[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class CalibrationResult:
    """The vectors plus the activations they were computed from and how long it took."""

    vectors: SteeringVectors
    activations: Activations
    seconds: float
    rows_per_second: float
    extra: dict[str, Any] = field(default_factory=dict)


def _user_text(item: ManifestItem, config: CalibrationConfig, *, refusal: bool) -> str:
    if config.text_only:
        request = item.text or item.transcript
        if not request:
            raise ManifestError(
                f"{item.source}: item {item.id!r} has no text or transcript; "
                "text-only calibration needs one of them on every line"
            )
        text = request
    else:
        text = item.text or config.prompt
    return f"{text}{config.refusal_separator}{config.refusal_instruction}" if refusal else text


def _conversations(
    items: Sequence[ManifestItem],
    clips: Sequence[np.ndarray | None],
    config: CalibrationConfig,
) -> list[list[Message]]:
    rows: list[list[Message]] = []
    for refusal in (False, True):
        for item, clip in zip(items, clips, strict=True):
            text = _user_text(item, config, refusal=refusal)
            rows.append([Message(role="user", text=text, audio=clip)])
    return rows


def _forward_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    """Skip work the capture does not need: only one position's logits, no KV cache."""
    params = inspect.signature(model.forward).parameters
    kwargs: dict[str, Any] = {"use_cache": False}
    if "logits_to_keep" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    ):
        kwargs["logits_to_keep"] = 1
    return kwargs


@contextlib.contextmanager
def _audio_encoded_once(model: torch.nn.Module) -> Iterator[dict[str, int]]:
    """Run the audio encoder once per clip, not once per row.

    Each calibration batch holds every clip twice (as is, then with the refusal
    instruction), and the encoder, which always sees 30 s of padded audio, dominates
    the cost. When the two halves of the encoder's batch are identical, a pre-hook
    feeds it one half and a hook duplicates the output; anything else passes through
    untouched, so captured states are unchanged bit for bit.
    """
    encoder = find_audio_encoder(model)
    stats = {"shared": 0, "full": 0}
    if encoder is None:
        yield stats
        return
    halved: list[bool] = [False]

    def pre_hook(
        module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        features = args[0] if args else kwargs.get("input_features")
        halved[0] = False
        if not isinstance(features, torch.Tensor) or features.shape[0] % 2:
            stats["full"] += 1
            return None
        half = features.shape[0] // 2
        if not torch.equal(features[:half], features[half:]):
            stats["full"] += 1
            return None
        halved[0] = True
        stats["shared"] += 1
        args = (features[:half], *args[1:]) if args else args
        kwargs = {
            key: value[:half]
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == 2 * half
            else value
            for key, value in kwargs.items()
        }
        return args, kwargs

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if not halved[0]:
            return None
        halved[0] = False
        if isinstance(output, torch.Tensor):
            return torch.cat([output, output])
        for key in ("last_hidden_state", "pooler_output"):
            value = getattr(output, key, None)
            if isinstance(value, torch.Tensor):
                output[key] = torch.cat([value, value])
        return output

    handles = [
        encoder.register_forward_pre_hook(pre_hook, with_kwargs=True),
        encoder.register_forward_hook(hook),
    ]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def capture_last_states(
    lm: AudioLanguageModel, conversations: Sequence[Sequence[Message]]
) -> torch.Tensor:
    """One forward pass over ``conversations``: ``[rows, layers, hidden]`` float32 on the CPU.

    Runs on the calling thread: the caller must be the model's only user (a backend calls it
    between its batches). All layers are captured on the device and copied to the host once;
    a batch that holds every clip twice (as calibration's does) encodes each clip once.
    """
    inputs: BatchFeature = lm.encode(conversations)
    with (
        torch.inference_mode(),
        LastPositionCapture(lm.decoder_layers) as capture,
        _audio_encoded_once(lm.model),
    ):
        lm.model(**inputs, **_forward_kwargs(lm.model))
    return capture.states


class _InlineCapture:
    """A loaded model as a :class:`CaptureSource` (captures on the caller's thread)."""

    def __init__(self, lm: AudioLanguageModel) -> None:
        self._lm = lm
        self.facts = lm.facts

    def capture(self, conversations: Sequence[Sequence[Message]]) -> torch.Tensor:
        return capture_last_states(self._lm, conversations)


def as_capture_source(source: CaptureSource | AudioLanguageModel) -> CaptureSource:
    """``source`` itself, or a loaded model wrapped to capture inline."""
    if isinstance(source, AudioLanguageModel):
        return _InlineCapture(source)
    return source


def capture_pairs(
    source: CaptureSource | AudioLanguageModel,
    items: Sequence[ManifestItem],
    config: CalibrationConfig,
    *,
    desc: str = "calibrating",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return last-position states ``(base, with_refusal)``, each ``[N, layers, hidden]``."""
    source = as_capture_source(source)
    rate = source.facts.sampling_rate
    bases: list[torch.Tensor] = []
    refusals: list[torch.Tensor] = []
    with tqdm(total=len(items), desc=desc, unit="turn", disable=not progress) as bar:
        for batch in _batches(items, config.batch_size):
            clips = [
                None
                if config.text_only or item.audio is None
                else load_audio(item.audio, target_rate=rate)
                for item in batch
            ]
            states = source.capture(_conversations(batch, clips, config))
            bases.append(states[: len(batch)])
            refusals.append(states[len(batch) :])
            bar.update(len(batch))
    return torch.cat(bases), torch.cat(refusals)


def _batches(items: Sequence[ManifestItem], size: int) -> Iterator[Sequence[ManifestItem]]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def calibrate(
    source: CaptureSource | AudioLanguageModel,
    harmful: Manifest,
    benign: Manifest,
    config: CalibrationConfig | None = None,
    *,
    progress: bool = True,
) -> CalibrationResult:
    """Compute SARSteer vectors from harmful and benign calibration manifests.

    Args:
        source: a generation backend (captures run between its batches) or a loaded model
            (captured on this thread; nothing else may use it meanwhile).
        harmful: turns the refusal direction is taken from.
        benign: turns whose principal directions are projected out.
        config: prompt, refusal instruction and separator, k, lambda, batch size, text mode.
        progress: show progress bars.
    """
    config = config or CalibrationConfig()
    source = as_capture_source(source)
    facts = source.facts
    if not harmful.items:
        raise ManifestError(f"{harmful.path}: no harmful calibration turns; add at least one line")
    if not benign.items:
        raise ManifestError(f"{benign.path}: no benign calibration turns; add at least one line")
    started = time.perf_counter()
    log.info(
        "calibration.start",
        model=facts.model_id,
        harmful=len(harmful.items),
        benign=len(benign.items),
        batch_size=config.batch_size,
        k=config.k,
        lam=config.lam,
    )
    harmful_base, harmful_refusal = capture_pairs(
        source, harmful.items, config, desc="harmful turns", progress=progress
    )
    benign_base, benign_refusal = capture_pairs(
        source, benign.items, config, desc="benign turns", progress=progress
    )
    vectors = refusal_vectors(
        harmful_base, harmful_refusal, benign_base, k=config.k, lam=config.lam
    )
    seconds = time.perf_counter() - started
    meta = _meta(facts, harmful, benign, config)
    rows = 2 * (len(harmful.items) + len(benign.items))
    log.info(
        "calibration.done", seconds=round(seconds, 2), rows_per_second=round(rows / seconds, 1)
    )
    return CalibrationResult(
        vectors=SteeringVectors(vectors=vectors, meta=meta),
        activations=Activations(harmful_base, harmful_refusal, benign_base, benign_refusal),
        seconds=seconds,
        rows_per_second=rows / seconds,
    )


def _meta(
    facts: ModelFacts, harmful: Manifest, benign: Manifest, config: CalibrationConfig
) -> VectorMeta:
    return VectorMeta(
        model_id=facts.model_id,
        model_fingerprint=facts.fingerprint,
        num_layers=facts.num_layers,
        hidden_size=facts.hidden_size,
        refusal_instruction=config.refusal_instruction,
        prompt=config.prompt,
        k=config.k,
        lam=config.lam,
        n_harmful=len(harmful.items),
        n_benign=len(benign.items),
        calibration_digest=calibration_digest(
            harmful, benign, config, system_prompt=facts.default_system_prompt
        ),
        library_version=__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        refusal_separator=config.refusal_separator,
    )


def calibration_digest(
    harmful: Manifest,
    benign: Manifest,
    config: CalibrationConfig,
    *,
    system_prompt: str | None = None,
) -> str:
    """Digest of the turns, the prompt and the text mode, so vector sets are keyed by content.

    ``system_prompt`` is the model's default system message (``ModelFacts``); it changes
    every captured state, so it counts when set (None leaves the digest as it always was).
    """
    import hashlib

    h = hashlib.sha256()
    mode = "text_only" if config.text_only else "audio"
    parts = [harmful.digest, benign.digest, config.prompt, mode]
    if system_prompt is not None:
        parts.append(f"system:{system_prompt}")
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def vector_set_key(
    facts: ModelFacts, harmful: Manifest, benign: Manifest, config: CalibrationConfig
) -> VectorSetKey:
    """The store key of the set :func:`calibrate` makes from these inputs (before making it).

    Equal to ``VectorSetKey.from_metadata`` of that set's metadata, so a store can be asked
    for the set before any state is captured.
    """
    return VectorSetKey(
        model_fingerprint=facts.fingerprint,
        calibration_digest=calibration_digest(
            harmful, benign, config, system_prompt=facts.default_system_prompt
        ),
        refusal_instruction=config.refusal_instruction,
        k=config.k,
        lam=config.lam,
        refusal_separator=config.refusal_separator,
    )
