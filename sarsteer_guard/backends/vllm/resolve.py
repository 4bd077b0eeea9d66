"""Which checkpoint directory the vLLM backend serves for a model name, and its end tokens.

vLLM reads weights itself, from a directory in the hub layout. Built-in names resolve to their
cache directory (written in that layout by ``models.loading``); a hub id resolves to its local
snapshot (offline: no download here); a directory is used as is. ``tiny-planted`` is refused:
its constructed attention needs head size 16, which vLLM's kernels do not support.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sarsteer_guard.errors import ModelLoadError, one_line

__all__ = ["TRANSFORMERS_ONLY", "ResolvedModel", "resolve_model"]

#: Built-in models whose weights vLLM cannot run, with the reason given to the user.
TRANSFORMERS_ONLY: dict[str, str] = {
    "tiny-planted": "its constructed attention uses head size 16, which vLLM does not support",
}


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model name turned into what vLLM loads.

    Attributes:
        path: checkpoint directory (hub layout).
        model_id: the name the user gave (reported in facts, audit and vector keys).
        is_test_model: a built-in test model.
        eos_token_ids: ids that end a reply (from ``generation_config.json``).
    """

    path: Path
    model_id: str
    is_test_model: bool
    eos_token_ids: frozenset[int]


def resolve_model(name: str) -> ResolvedModel:
    """Resolve ``name`` (built-in, directory or cached hub id) to a checkpoint directory.

    Raises:
        ModelLoadError: one line naming the problem and the fix.
    """
    from sarsteer_guard.models.loading import BUILTIN_MODELS, ensure_builtin_model

    if name in TRANSFORMERS_ONLY:
        raise ModelLoadError(
            f"model {name!r} runs on the transformers engine only ({TRANSFORMERS_ONLY[name]}); "
            "use --engine transformers, or --model tiny on vLLM"
        )
    builtin = name in BUILTIN_MODELS
    path = ensure_builtin_model(name) if builtin else _locate(name)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json; pass a complete checkpoint directory")
    return ResolvedModel(path, name, builtin, _eos_ids(path))


def _locate(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model directory {name!r} does not exist; check the path")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as error:
        raise ModelLoadError(
            f"cannot find model {name!r} in the local Hugging Face cache ({one_line(error)}); "
            f"download it first (hf download {name}) or pass a checkpoint directory"
        ) from error


def _eos_ids(path: Path) -> frozenset[int]:
    file = path / "generation_config.json"
    if not file.is_file():
        return frozenset()
    raw = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
    ids = raw if isinstance(raw, list) else [] if raw is None else [raw]
    return frozenset(int(i) for i in ids)
