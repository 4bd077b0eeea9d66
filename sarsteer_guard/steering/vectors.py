"""Steering-vector sets: an immutable ``[layers, hidden]`` float32 tensor plus its provenance.

A vector set is calibrated once per model and then shipped (directory, Redis, signed bundles),
so it must round-trip exactly, carry enough metadata to refuse the wrong model, and have a digest
that is identical in every process that reads the same bytes. The file format is plain
safetensors: one tensor ``vectors`` and string metadata (every :class:`VectorMeta` field, plus
``format`` and the ``digest``, which is rechecked on load to catch corrupted data bytes).

Fields added after the format was first shipped (``refusal_separator``) are optional on read:
a file written before them states nothing, and reads back with the value every set had then.
Its stored digest is checked against the metadata as written, so such files still verify.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, overload

import torch

from sarsteer_guard._version import __version__
from sarsteer_guard.defaults import DEFAULT_REFUSAL_SEPARATOR, LEGACY_REFUSAL_SEPARATOR
from sarsteer_guard.errors import VectorIntegrityError, VectorsError

__all__ = ["FORMAT", "TENSOR_NAME", "SteeringVectors", "VectorMeta"]

#: Value of the ``format`` metadata key; bump the suffix on incompatible changes.
FORMAT = "sarsteer-vectors/1"
#: Name of the tensor inside the safetensors file.
TENSOR_NAME = "vectors"

_INT_FIELDS = ("num_layers", "hidden_size", "k", "n_harmful", "n_benign")
_FLOAT_FIELDS = ("lam",)
_RESERVED_KEYS = ("format", "digest")
#: Fields newer than the format: absent in older files, which were made with these values.
_LEGACY_VALUES = {"refusal_separator": LEGACY_REFUSAL_SEPARATOR}


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class VectorMeta:
    """Provenance of a vector set: which model, which calibration, which settings.

    Every field is serialised as a string into the safetensors metadata; ``lam`` uses ``repr``
    so the float comes back bit-exact. ``refusal_separator`` joins the prompt and the refusal
    instruction during calibration (it changes the vectors, so it is part of the set's key); a
    file without it was calibrated with one space.
    """

    model_id: str
    model_fingerprint: str
    num_layers: int
    hidden_size: int
    refusal_instruction: str
    prompt: str
    k: int
    lam: float
    n_harmful: int
    n_benign: int
    calibration_digest: str
    library_version: str = __version__
    created_at: str = field(default_factory=_utc_now)
    refusal_separator: str = DEFAULT_REFUSAL_SEPARATOR

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise VectorsError(
                    f"VectorMeta.{name} must be an int, got {value!r}: fix the caller"
                )
            if value < 0:
                raise VectorsError(f"VectorMeta.{name} must be >= 0, got {value}: fix the caller")
        lam = self.lam
        if isinstance(lam, bool) or not isinstance(lam, int | float):
            raise VectorsError(f"VectorMeta.lam must be a float, got {lam!r}: fix the caller")
        object.__setattr__(self, "lam", float(lam))  # int 1 and float 1.0 must serialise alike
        for f in dataclasses.fields(self):
            if f.name not in _INT_FIELDS and f.name not in _FLOAT_FIELDS:
                value = getattr(self, f.name)
                if not isinstance(value, str):
                    raise VectorsError(
                        f"VectorMeta.{f.name} must be a str, got {value!r}: fix the caller"
                    )

    def to_strings(self) -> dict[str, str]:
        """Serialise to the ``str -> str`` mapping safetensors metadata requires."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = repr(value) if f.name in _FLOAT_FIELDS else str(value)
        return out

    @classmethod
    def from_strings(cls, data: dict[str, str], *, source: str = "vector set") -> VectorMeta:
        """Parse the mapping written by :meth:`to_strings`; unknown keys are ignored.

        Raises:
            VectorsError: a field is missing or does not parse.
        """
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data and f.name in _LEGACY_VALUES:
                kwargs[f.name] = _LEGACY_VALUES[f.name]
                continue
            if f.name not in data:
                raise VectorsError(
                    f"{source}: metadata field {f.name!r} is missing: recalibrate or re-export it"
                )
            raw = data[f.name]
            try:
                if f.name in _INT_FIELDS:
                    kwargs[f.name] = int(raw)
                elif f.name in _FLOAT_FIELDS:
                    kwargs[f.name] = float(raw)
                else:
                    kwargs[f.name] = raw
            except ValueError:
                raise VectorsError(
                    f"{source}: metadata field {f.name!r} has invalid value {raw!r}: "
                    "recalibrate or re-export it"
                ) from None
        try:
            return cls(**kwargs)
        except VectorsError as exc:
            raise VectorsError(f"{source}: {exc}") from None


class _FrozenTensor:
    """Data descriptor: stores a private float32 CPU copy, hands out a fresh clone on access.

    torch has no read-only tensors, so cloning on access is what keeps a shared vector set from
    being edited in place by one consumer under another (a few hundred KiB per access).
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = "_" + name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _FrozenTensor: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> torch.Tensor: ...
    def __get__(self, obj: object | None, objtype: type | None = None) -> Any:
        if obj is None:
            # dataclasses asks the class for a default; raising AttributeError means "none".
            raise AttributeError(self._slot)
        stored: torch.Tensor = getattr(obj, self._slot)
        return stored.clone()

    def __set__(self, obj: object, value: torch.Tensor) -> None:
        if self._slot in vars(obj):
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {self._slot[1:]!r}")
        if not isinstance(value, torch.Tensor):
            raise VectorsError(f"vectors must be a torch.Tensor, got {type(value).__name__}")
        if value.ndim != 2:
            raise VectorsError(
                f"vectors must be [layers, hidden], got shape {tuple(value.shape)}: fix the caller"
            )
        if not value.is_floating_point():
            raise VectorsError(f"vectors must be floating point, got {value.dtype}: fix the caller")
        copy = value.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
        if not bool(torch.isfinite(copy).all()):
            raise VectorsError("vectors contain NaN or Inf: recalibrate (check the model dtype)")
        object.__setattr__(obj, self._slot, copy)


@dataclass(frozen=True, eq=False)
class SteeringVectors:
    """One calibrated vector set: ``vectors[l]`` is added at decoder layer ``l``.

    ``vectors`` is ``[num_layers, hidden_size]`` float32 on CPU. The constructor stores a
    private copy and every read of ``.vectors`` returns a fresh clone, so the set is a value:
    nothing a consumer does to the tensor it got changes the set or its :attr:`digest`.
    Equality compares digests.
    """

    vectors: _FrozenTensor = _FrozenTensor()  # descriptor field: __init__ takes, reads give Tensor
    meta: VectorMeta  # type: ignore[misc]  # mypy counts the descriptor as a default; it is none

    _vectors: ClassVar[torch.Tensor]

    def __post_init__(self) -> None:
        if not isinstance(self.meta, VectorMeta):
            raise VectorsError(f"meta must be a VectorMeta, got {type(self.meta).__name__}")
        layers, hidden = self._vectors.shape
        if (layers, hidden) != (self.meta.num_layers, self.meta.hidden_size):
            raise VectorsError(
                f"vectors have shape [{layers}, {hidden}] but meta says "
                f"[{self.meta.num_layers}, {self.meta.hidden_size}]: fix the caller"
            )

    # -- convenience ---------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """Number of decoder layers the set was calibrated for."""
        return self.meta.num_layers

    @property
    def hidden_size(self) -> int:
        """Hidden size of the model the set was calibrated for."""
        return self.meta.hidden_size

    def scaled(
        self, alpha: float, beta: torch.Tensor | list[float] | tuple[float, ...] | None = None
    ) -> torch.Tensor:
        """Return ``alpha * beta[:, None] * vectors`` (float32, CPU): what steering adds per layer.

        Raises:
            VectorsError: ``beta`` does not have one weight per layer.
        """
        out = self._vectors * float(alpha)
        if beta is not None:
            b = torch.as_tensor(beta, dtype=torch.float32).flatten()
            if b.numel() != self.num_layers:
                raise VectorsError(
                    f"beta has {b.numel()} weights but the set has {self.num_layers} layers: "
                    "pass one weight per layer"
                )
            out = out * b[:, None]
        return out

    # -- identity ------------------------------------------------------------------------------

    @cached_property
    def digest(self) -> str:
        """sha256 hex over the tensor's raw float32 bytes, its shape and canonical metadata JSON.

        Stable across processes and machines (little-endian float32, sorted-key JSON).
        """
        return _digest(self._vectors, self.meta.to_strings())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SteeringVectors):
            return NotImplemented
        return self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def check_compatible(self, *, num_layers: int, hidden_size: int, fingerprint: str) -> None:
        """Refuse a model this set was not calibrated for.

        Raises:
            VectorsError: one line naming every difference (layer count, hidden size, fingerprint).
        """
        diffs: list[str] = []
        if num_layers != self.meta.num_layers:
            diffs.append(f"{self.meta.num_layers} layers, model has {num_layers}")
        if hidden_size != self.meta.hidden_size:
            diffs.append(f"hidden size {self.meta.hidden_size}, model has {hidden_size}")
        if fingerprint != self.meta.model_fingerprint:
            diffs.append(
                f"model fingerprint {self.meta.model_fingerprint[:12]}, "
                f"model has {fingerprint[:12]}"
            )
        if diffs:
            raise VectorsError(
                f"vectors for {self.meta.model_id!r} do not fit this model "
                f"(vectors: {'; '.join(diffs)}): recalibrate vectors for this model"
            )

    # -- serialisation -------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Serialise to safetensors bytes (tensor ``vectors``, metadata strings, digest)."""
        from safetensors.torch import save

        metadata = self.meta.to_strings()
        metadata["format"] = FORMAT
        metadata["digest"] = self.digest
        data: bytes = save({TENSOR_NAME: self._vectors}, metadata=metadata)
        return data

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "vector set") -> SteeringVectors:
        """Parse bytes written by :meth:`to_bytes`.

        Raises:
            VectorsError: not safetensors, truncated, missing tensor or metadata, bad shape.
            VectorIntegrityError: the stored digest does not match the content (corrupted data).
        """
        from safetensors.torch import load

        metadata = _read_header_metadata(data, source)
        if metadata.get("format") != FORMAT:
            raise VectorsError(
                f"{source}: format is {metadata.get('format')!r}, expected {FORMAT!r}: "
                "re-export it with this library version"
            )
        try:
            tensors = load(bytes(data))
        except Exception as exc:  # SafetensorError and friends; message must stay one line
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise VectorsError(
                f"{source}: unreadable safetensors data ({reason}): re-export or recalibrate it"
            ) from None
        if TENSOR_NAME not in tensors:
            raise VectorsError(
                f"{source}: no tensor named {TENSOR_NAME!r}: not a steering-vector file"
            )
        tensor = tensors[TENSOR_NAME]
        if tensor.dtype != torch.float32:
            raise VectorsError(f"{source}: tensor dtype is {tensor.dtype}, expected float32")
        meta = VectorMeta.from_strings(metadata, source=source)
        try:
            out = cls(vectors=tensor, meta=meta)
        except VectorsError as exc:
            raise VectorsError(f"{source}: {exc}") from None
        stored = metadata.get("digest")
        written = {k: v for k, v in metadata.items() if k not in _RESERVED_KEYS}
        if stored is not None and stored != _digest(out._vectors, written):
            raise VectorIntegrityError(
                f"{source}: content does not match its digest (corrupted or edited): "
                "restore it from the store or recalibrate"
            )
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temporary file, then rename) so readers never see half a file."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(self.to_bytes())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVectors:
        """Read a file written by :meth:`save`.

        Raises:
            VectorsError: missing, unreadable, not a vector file, or corrupted.
        """
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise VectorsError(
                f"no vector file at {p}: check the path or calibrate first"
            ) from None
        except OSError as exc:
            raise VectorsError(f"cannot read {p} ({exc.strerror}): check permissions") from None
        return cls.from_bytes(data, source=str(p))

    def __repr__(self) -> str:
        return (
            f"SteeringVectors(model_id={self.meta.model_id!r}, "
            f"shape=[{self.num_layers}, {self.hidden_size}], digest={self.digest[:12]})"
        )


def _digest(tensor: torch.Tensor, meta: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(FORMAT.encode())
    h.update(b"\0")
    header = {"dtype": "float32", "shape": list(tensor.shape), "meta": meta}
    h.update(json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())
    h.update(b"\0")
    h.update(tensor.contiguous().numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()


def _read_header_metadata(data: bytes, source: str) -> dict[str, str]:
    """Read ``__metadata__`` from a safetensors header (the Python API reads it only from files)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise VectorsError(f"{source}: expected bytes, got {type(data).__name__}")
    bad = f"{source}: not a safetensors steering-vector file"
    if len(data) < 8:
        raise VectorsError(f"{bad} (only {len(data)} bytes): re-export or recalibrate it")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > len(data) - 8:
        raise VectorsError(f"{bad} (truncated header): re-export or recalibrate it")
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VectorsError(f"{bad} (header is not JSON): re-export or recalibrate it") from None
    if not isinstance(header, dict):
        raise VectorsError(f"{bad} (header is not a JSON object): re-export or recalibrate it")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise VectorsError(f"{source}: no string metadata: not a steering-vector file")
    return meta
