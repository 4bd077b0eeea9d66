"""Calibration: run the model over harmful and benign turns and extract SARSteer vectors.

This is the glue between the model adapter (which knows a family's chat format),
the capture hooks and the extraction math (which know nothing of models or files).
Each batch is one forward pass over ``2 x batch`` rows (every turn as is and with the
refusal instruction appended), left padded so the captured position is each row's
real last token, with all layers captured on the device and copied to the host once.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
)
from sarsteer_guard.errors import ManifestError
from sarsteer_guard.log import get_logger
from sarsteer_guard.manifest import Manifest, ManifestItem
from sarsteer_guard.models.base import AudioLanguageModel, Message, find_audio_encoder
from sarsteer_guard.steering import LastPositionCapture, SteeringVectors, VectorMeta
from sarsteer_guard.steering.extract import refusal_vectors

if TYPE_CHECKING:
    from transformers import BatchFeature

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CalibrationConfig:
    """What the vectors depend on (besides the model and the calibration turns)."""

    prompt: str = DEFAULT_PROMPT
    refusal_instruction: str = DEFAULT_REFUSAL_INSTRUCTION
    k: int = DEFAULT_K
    lam: float = DEFAULT_LAMBDA
    batch_size: int = 8
    text_only: bool = False


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
    return f"{text} {config.refusal_instruction}" if refusal else text


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


def capture_pairs(
    lm: AudioLanguageModel,
    items: Sequence[ManifestItem],
    config: CalibrationConfig,
    *,
    desc: str = "calibrating",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return last-position states ``(base, with_refusal)``, each ``[N, layers, hidden]``."""
    bases: list[torch.Tensor] = []
    refusals: list[torch.Tensor] = []
    forward_kwargs = _forward_kwargs(lm.model)
    with tqdm(total=len(items), desc=desc, unit="turn", disable=not progress) as bar:
        for batch in _batches(items, config.batch_size):
            clips = [
                None
                if config.text_only or item.audio is None
                else load_audio(item.audio, target_rate=lm.sampling_rate)
                for item in batch
            ]
            inputs: BatchFeature = lm.encode(_conversations(batch, clips, config))
            with (
                torch.inference_mode(),
                LastPositionCapture(lm.decoder_layers) as capture,
                _audio_encoded_once(lm.model),
            ):
                lm.model(**inputs, **forward_kwargs)
            states = capture.states
            bases.append(states[: len(batch)])
            refusals.append(states[len(batch) :])
            bar.update(len(batch))
    return torch.cat(bases), torch.cat(refusals)


def _batches(items: Sequence[ManifestItem], size: int) -> Iterator[Sequence[ManifestItem]]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def calibrate(
    lm: AudioLanguageModel,
    harmful: Manifest,
    benign: Manifest,
    config: CalibrationConfig | None = None,
    *,
    progress: bool = True,
) -> CalibrationResult:
    """Compute SARSteer vectors for ``lm`` from harmful and benign calibration manifests."""
    config = config or CalibrationConfig()
    if not harmful.items:
        raise ManifestError(f"{harmful.path}: no harmful calibration turns; add at least one line")
    if not benign.items:
        raise ManifestError(f"{benign.path}: no benign calibration turns; add at least one line")
    started = time.perf_counter()
    log.info(
        "calibration.start",
        model=lm.model_id,
        harmful=len(harmful.items),
        benign=len(benign.items),
        batch_size=config.batch_size,
        k=config.k,
        lam=config.lam,
    )
    harmful_base, harmful_refusal = capture_pairs(
        lm, harmful.items, config, desc="harmful turns", progress=progress
    )
    benign_base, benign_refusal = capture_pairs(
        lm, benign.items, config, desc="benign turns", progress=progress
    )
    vectors = refusal_vectors(
        harmful_base, harmful_refusal, benign_base, k=config.k, lam=config.lam
    )
    seconds = time.perf_counter() - started
    meta = VectorMeta(
        model_id=lm.model_id,
        model_fingerprint=lm.fingerprint,
        num_layers=lm.num_layers,
        hidden_size=lm.hidden_size,
        refusal_instruction=config.refusal_instruction,
        prompt=config.prompt,
        k=config.k,
        lam=config.lam,
        n_harmful=len(harmful.items),
        n_benign=len(benign.items),
        calibration_digest=calibration_digest(harmful, benign, config),
        library_version=__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
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


def calibration_digest(harmful: Manifest, benign: Manifest, config: CalibrationConfig) -> str:
    """Digest of the turns, the prompt and the text mode, so vector sets are keyed by content."""
    import hashlib

    h = hashlib.sha256()
    mode = "text_only" if config.text_only else "audio"
    for part in (harmful.digest, benign.digest, config.prompt, mode):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()
