"""Identity of a stored vector set, read straight from the safetensors header.

The store handles opaque bytes and must not import torch, so this module parses the
safetensors header itself: an 8-byte little-endian length, then a JSON object whose
``__metadata__`` holds the string metadata written by ``SteeringVectors.to_bytes``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sarsteer_guard.defaults import LEGACY_REFUSAL_SEPARATOR
from sarsteer_guard.errors import VectorsError

#: Metadata keys every stored vector set carries (see ``steering.vectors.VectorMeta``).
REQUIRED_METADATA = (
    "model_id",
    "model_fingerprint",
    "num_layers",
    "hidden_size",
    "refusal_instruction",
    "prompt",
    "k",
    "lam",
    "n_harmful",
    "n_benign",
    "calibration_digest",
    "library_version",
    "created_at",
)

#: The one tensor a vector set holds.
TENSOR_NAME = "vectors"

# A header larger than this is not a vector set (safetensors itself caps at 100 MB).
_MAX_HEADER = 1 << 20
_ID_DOMAIN = "sarsteer-guard/vector-set-key/v1"


@dataclass(frozen=True)
class BlobHeader:
    """What the store needs from a blob's safetensors header, validated against its length."""

    metadata: dict[str, str]
    shape: tuple[int, int]
    #: Bytes taken by the length prefix and the JSON header; the tensor data follows.
    header_size: int


def _not_a_set(reason: str) -> VectorsError:
    return VectorsError(
        f"not a steering-vector set ({reason}): push a file written by SteeringVectors.save"
    )


def parse_header(blob: bytes, *, check_length: bool = True) -> BlobHeader:
    """Parse and validate the safetensors header of a vector-set blob.

    Args:
        blob: The whole blob, or (with ``check_length=False``) at least its header.
        check_length: Require the tensor data to fill the blob exactly, so a truncated
            or padded blob is rejected before anyone decodes it.

    Raises:
        VectorsError: The bytes are not a float32 ``[layers, hidden]`` vector set with
            complete metadata.
    """
    if len(blob) < 8:
        raise _not_a_set(f"{len(blob)} bytes is shorter than a safetensors header")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_HEADER or 8 + n > len(blob):
        raise _not_a_set("header length is out of range; the data is truncated or not safetensors")
    try:
        header: Any = json.loads(blob[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _not_a_set(f"header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise _not_a_set("header is not a JSON object")
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _not_a_set("no string metadata")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise _not_a_set(f"metadata lacks {', '.join(missing)}")
    info = header.get(TENSOR_NAME)
    if not isinstance(info, dict):
        raise _not_a_set(f"no tensor named {TENSOR_NAME!r}")
    shape, dtype, offsets = info.get("shape"), info.get("dtype"), info.get("data_offsets")
    if dtype != "F32" or not isinstance(shape, list) or len(shape) != 2:
        raise _not_a_set(f"tensor is {dtype} {shape}, expected F32 [layers, hidden]")
    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise _not_a_set(f"tensor shape {shape} has an empty dimension")
    layers, hidden = shape
    if not isinstance(offsets, list) or offsets != [0, layers * hidden * 4]:
        raise _not_a_set(f"tensor data offsets {offsets} do not match shape {shape}")
    if check_length and len(blob) != 8 + n + offsets[1]:
        raise _not_a_set(f"{len(blob)} bytes, expected {8 + n + offsets[1]}; the data is truncated")
    try:
        declared = (int(metadata["num_layers"]), int(metadata["hidden_size"]))
    except ValueError:
        raise _not_a_set("num_layers/hidden_size are not integers") from None
    if declared != (layers, hidden):
        raise _not_a_set(f"metadata says {declared}, tensor is {tuple(shape)}")
    return BlobHeader(metadata=dict(metadata), shape=(layers, hidden), header_size=8 + n)


def header_prefix_length(prefix: bytes) -> int | None:
    """Bytes needed to parse the header, or None when ``prefix`` is shorter than 8 bytes."""
    if len(prefix) < 8:
        return None
    return 8 + int(struct.unpack("<Q", prefix[:8])[0])


@dataclass(frozen=True)
class VectorSetKey:
    """What makes two vector sets interchangeable: the calibration inputs.

    ``alpha`` is applied at run time, so it is not part of the key: policies that
    differ only in alpha share one stored set. ``refusal_separator`` (how the refusal
    instruction was joined to the prompt) changes the vectors, so it is; metadata without
    it means one space, the only form before it was recorded, and that form is left out of
    the id so every set stored before keeps its id.
    """

    model_fingerprint: str
    calibration_digest: str
    refusal_instruction: str
    k: int
    lam: float
    refusal_separator: str = LEGACY_REFUSAL_SEPARATOR

    @functools.cached_property
    def id(self) -> str:
        """Stable 32-hex-digit id: sha256 of the canonical JSON of the fields (128 bits).

        Cached: the Guard looks sets up by key on every turn.
        """
        fields: dict[str, object] = {
            "domain": _ID_DOMAIN,
            "model_fingerprint": self.model_fingerprint,
            "calibration_digest": self.calibration_digest,
            "refusal_instruction": self.refusal_instruction,
            "k": int(self.k),
            # repr of a float round-trips exactly, so "1", "1.0" and 1 agree.
            "lam": repr(float(self.lam)),
        }
        if self.refusal_separator != LEGACY_REFUSAL_SEPARATOR:
            fields["refusal_separator"] = self.refusal_separator
        canonical = json.dumps(
            fields,
            sort_keys=True,
            ensure_ascii=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:32]

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> VectorSetKey:
        """Build the key from a set's string metadata.

        Raises:
            VectorsError: A key field is missing or not a number where one is expected.
        """
        try:
            return cls(
                model_fingerprint=metadata["model_fingerprint"],
                calibration_digest=metadata["calibration_digest"],
                refusal_instruction=metadata["refusal_instruction"],
                k=int(metadata["k"]),
                lam=float(metadata["lam"]),
                refusal_separator=metadata.get("refusal_separator", LEGACY_REFUSAL_SEPARATOR),
            )
        except KeyError as error:
            raise _not_a_set(f"metadata lacks {error.args[0]}") from None
        except ValueError as error:
            raise _not_a_set(f"bad k or lam in metadata: {error}") from None

    @classmethod
    def from_blob(cls, blob: bytes) -> VectorSetKey:
        """Read the key from a vector-set blob's safetensors header (validated)."""
        return cls.from_metadata(parse_header(blob).metadata)


def is_set_id(text: str) -> bool:
    """Whether ``text`` looks like a :attr:`VectorSetKey.id` (guards file names and Redis keys)."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)
