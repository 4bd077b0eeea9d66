"""``load_model``: hub id, local directory or built-in name -> the right adapter.

Built-in models (``tiny``, ``tiny-planted``) are written once in the hub's weight layout
(:mod:`.hub_layout`, as real checkpoints are, so vLLM reads them too) into a cache directory and
then loaded through exactly the same ``from_pretrained`` path as a 7B checkpoint, so tests
exercise the production loading code. ``tiny-trained`` (the trained model organism) is shipped
as a checkpoint in the package, in the hub's weight layout, and read from there. The loader
marks all of them ``is_test_model`` so that callers can warn about them without naming them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import EllipsisType
from typing import Any

import torch

from sarsteer_guard._version import __version__
from sarsteer_guard.errors import ModelLoadError, one_line
from sarsteer_guard.log import get_logger

from .base import AudioLanguageModel
from .generic import GenericAudioLM
from .hub_layout import save_hub_layout
from .qwen2_5_omni import Qwen2_5OmniThinkerLM
from .qwen2_audio import Qwen2AudioLM

__all__ = ["BUILTIN_MODELS", "builtin_model_dir", "ensure_builtin_model", "load_model"]

_log = get_logger(__name__)

#: Names ``load_model`` builds itself instead of reading from the hub.
BUILTIN_MODELS = ("tiny", "tiny-planted", "tiny-trained")

_ADAPTERS: tuple[type[Qwen2AudioLM] | type[Qwen2_5OmniThinkerLM], ...] = (
    Qwen2AudioLM,
    Qwen2_5OmniThinkerLM,
)


def load_model(
    name_or_path: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    default_system_prompt: str | EllipsisType | None = ...,
) -> AudioLanguageModel:
    """Load an audio-language model and wrap it in its family's adapter.

    Args:
        name_or_path: a hub id (from the local Hugging Face cache when offline), a checkpoint
            directory, or a built-in name (``tiny``, ``tiny-planted``, ``tiny-trained``).
        device: defaults to CUDA when available, else CPU.
        dtype: defaults to bfloat16 on CUDA, float32 on CPU.
        default_system_prompt: system message for conversations without one; ``...`` keeps
            the family's default (Qwen2.5-Omni's official prompt, none elsewhere), None sends
            none (the chat template's own default applies).

    Raises:
        ModelLoadError: one line naming the problem (missing path, unsupported class) and the fix.
    """
    target = torch.device(device) if device is not None else _default_device()
    torch_dtype = _resolve_dtype(dtype, target)
    path = (
        str(ensure_builtin_model(name_or_path))
        if name_or_path in BUILTIN_MODELS
        else _locate(name_or_path)
    )
    config = _load_config(name_or_path, path)
    adapter = _pick_adapter(config)
    try:
        model = adapter.load(
            path, model_id=name_or_path, config=config, device=target, dtype=torch_dtype
        )
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        raise ModelLoadError(
            f"cannot load model {name_or_path!r}: {one_line(exc)}; "
            "check that the checkpoint directory is complete"
        ) from exc
    model.is_test_model = name_or_path in BUILTIN_MODELS
    if not isinstance(default_system_prompt, EllipsisType):
        model.default_system_prompt = default_system_prompt
    _log.info(
        "model_loaded",
        model=name_or_path,
        adapter=adapter.__name__,
        layers=model.num_layers,
        hidden=model.hidden_size,
        device=str(model.device),
        dtype=str(model.dtype).removeprefix("torch."),
    )
    return model


def builtin_model_dir(name: str) -> Path:
    """Cache directory of a built-in model: ``$SARSTEER_CACHE`` or ``~/.cache/sarsteer-guard``.

    The name carries a hash of the builder source and library versions, so a changed builder
    never reuses a stale directory.
    """
    root = os.environ.get("SARSTEER_CACHE") or str(Path.home() / ".cache" / "sarsteer-guard")
    return Path(root).expanduser() / f"{name}-{_builder_hash()}"


def ensure_builtin_model(name: str) -> Path:
    """Build a built-in model into its cache directory once; return the directory.

    Written to a temporary sibling and renamed into place, so readers never see a partial
    checkpoint and two racing processes both end up with one complete directory.
    """
    from .builtin import SHIPPED_MODELS, shipped_model_dir

    if name in SHIPPED_MODELS:
        return shipped_model_dir(name)
    builders = _builders()
    if name not in builders:
        raise ModelLoadError(
            f"unknown built-in model {name!r}; use one of {', '.join(BUILTIN_MODELS)}"
        )
    final = builtin_model_dir(name)
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        model, processor = builders[name]()
        save_hub_layout(model, processor, tmp)  # as real checkpoints are: every engine reads it
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
            # Another process finished first; its directory is equally valid.
        else:
            _log.info("builtin_model_built", model=name, path=str(final))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _builders() -> dict[str, Callable[[], tuple[Any, Any]]]:
    from .builtin import build_planted_model, build_tiny_model

    def planted() -> tuple[Any, Any]:
        built = build_planted_model()
        return built.model, built.processor

    return {"tiny": build_tiny_model, "tiny-planted": planted}


def _builder_hash() -> str:
    import tokenizers
    import transformers

    from . import builtin as kit
    from . import hub_layout

    digest = hashlib.sha256()
    for part in (__version__, transformers.__version__, tokenizers.__version__):
        digest.update(part.encode() + b"\0")
    digest.update(Path(kit.__file__).read_bytes())
    digest.update(Path(hub_layout.__file__).read_bytes())  # how it is written
    return digest.hexdigest()[:12]


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return resolved


def _locate(name_or_path: str) -> str:
    """A local directory as a string, or the hub id unchanged; fail fast on a missing path."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ModelLoadError(
            f"model path {name_or_path!r} is a file; pass the checkpoint directory"
        )
    looks_like_path = (
        name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or os.sep == "\\"
    )
    if looks_like_path:
        raise ModelLoadError(
            f"model directory {name_or_path!r} does not exist; check the path or pass a hub id"
        )
    return name_or_path


def _load_config(name: str, path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(
                f"model {name!r} needs remote code, which sarsteer-guard never runs; "
                "use a transformers-native audio LM such as Qwen/Qwen2-Audio-7B-Instruct"
            ) from exc
        raise ModelLoadError(
            f"model {name!r} has an unsupported config ({one_line(exc)}); "
            "use a transformers-native audio LM such as Qwen/Qwen2-Audio-7B-Instruct"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(
            f"cannot find model {name!r} locally or in the Hugging Face cache (offline?); "
            f"download it first (hf download {name}) or pass a checkpoint directory"
        ) from exc


def _pick_adapter(config: Any) -> type[AudioLanguageModel]:
    model_type = str(getattr(config, "model_type", ""))
    for adapter in _ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    return GenericAudioLM
