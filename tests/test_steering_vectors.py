from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save

from sarsteer_guard.errors import VectorIntegrityError, VectorsError
from sarsteer_guard.steering import SteeringVectors, VectorMeta
from sarsteer_guard.steering.vectors import FORMAT


def make_meta(**overrides: object) -> VectorMeta:
    fields: dict[str, object] = {
        "model_id": "tiny/qwen2-audio",
        "model_fingerprint": "ab" * 32,
        "num_layers": 3,
        "hidden_size": 4,
        "refusal_instruction": "I cannot assist with that.",
        "prompt": "Please generate detailed steps for the question in the audio.",
        "k": 2,
        "lam": 0.1 + 0.2,  # 0.30000000000000004: a float that str() would not round-trip
        "n_harmful": 5,
        "n_benign": 7,
        "calibration_digest": "cd" * 32,
        "library_version": "0.1.0",
        "created_at": "2026-11-22T10:00:00+00:00",
    }
    fields.update(overrides)
    return VectorMeta(**fields)  # type: ignore[arg-type]


def make_set(**overrides: object) -> SteeringVectors:
    torch.manual_seed(0)
    return SteeringVectors(vectors=torch.randn(3, 4), meta=make_meta(**overrides))


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_bytes_round_trip_is_exact() -> None:
    sv = make_set()
    back = SteeringVectors.from_bytes(sv.to_bytes())
    assert torch.equal(back.vectors, sv.vectors)
    assert back.vectors.dtype == torch.float32
    assert back.meta == sv.meta
    assert back.meta.lam == 0.1 + 0.2
    assert back.digest == sv.digest
    assert back == sv


def test_file_round_trip_is_exact_and_leaves_no_temp_files(tmp_path: Path) -> None:
    sv = make_set(lam=1e-300, k=0)
    path = tmp_path / "v.safetensors"
    sv.save(path)
    back = SteeringVectors.load(path)
    assert torch.equal(back.vectors, sv.vectors)
    assert back.meta == sv.meta
    assert back.digest == sv.digest
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


def test_digest_matches_its_documented_recipe() -> None:
    # Recomputed from raw bytes and sorted-key JSON only: nothing process-dependent goes in, so
    # another process (or a store that only sees bytes) gets the same digest.
    values = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    meta = make_meta()
    sv = SteeringVectors(vectors=values, meta=meta)
    strings = {f.name: str(getattr(meta, f.name)) for f in dataclasses.fields(meta)}
    strings["lam"] = repr(meta.lam)
    header = {"dtype": "float32", "shape": [3, 4], "meta": strings}
    h = hashlib.sha256(FORMAT.encode() + b"\0")
    h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\0")
    h.update(np.arange(12, dtype="<f4").tobytes())
    assert sv.digest == h.hexdigest()
    assert SteeringVectors.from_bytes(sv.to_bytes()).digest == h.hexdigest()


def test_digest_changes_with_values_and_metadata() -> None:
    sv = make_set()
    other_values = SteeringVectors(vectors=sv.vectors + 1e-7, meta=sv.meta)
    other_meta = SteeringVectors(vectors=sv.vectors, meta=dataclasses.replace(sv.meta, k=3))
    assert len({sv.digest, other_values.digest, other_meta.digest}) == 3


def test_value_semantics() -> None:
    source = torch.randn(3, 4, dtype=torch.float64)
    sv = SteeringVectors(vectors=source, meta=make_meta())
    digest = sv.digest
    source.add_(1.0)  # the caller's tensor is not the stored one
    sv.vectors.add_(1.0)  # neither is the one handed out
    assert torch.equal(sv.vectors, source.sub(1.0).float())
    assert sv.vectors.dtype == torch.float32
    assert sv.vectors.is_contiguous()
    assert sv.digest == digest
    with pytest.raises(dataclasses.FrozenInstanceError):
        sv.vectors = torch.zeros(3, 4)  # type: ignore[misc]  # asserting the runtime guard
    with pytest.raises(dataclasses.FrozenInstanceError):
        sv.meta = make_meta()  # type: ignore[misc]  # asserting the runtime guard


def test_constructor_rejects_bad_tensors() -> None:
    with pytest.raises(VectorsError, match=r"\[3, 5\]"):
        SteeringVectors(vectors=torch.zeros(3, 5), meta=make_meta())
    with pytest.raises(VectorsError, match="layers, hidden"):
        SteeringVectors(vectors=torch.zeros(3, 4, 1), meta=make_meta())
    with pytest.raises(VectorsError, match="NaN"):
        SteeringVectors(vectors=torch.full((3, 4), float("nan")), meta=make_meta())
    with pytest.raises(VectorsError, match="num_layers"):
        make_meta(num_layers="3")


def test_scaled() -> None:
    sv = make_set()
    beta = [1.0, 0.0, 2.0]
    expected = 0.5 * torch.tensor(beta)[:, None] * sv.vectors
    assert torch.allclose(sv.scaled(0.5, beta), expected)
    assert torch.equal(sv.scaled(2.0), sv.vectors * 2.0)
    with pytest.raises(VectorsError, match="one weight per layer"):
        sv.scaled(1.0, [1.0, 2.0])


def test_check_compatible_names_each_difference() -> None:
    sv = make_set()
    sv.check_compatible(num_layers=3, hidden_size=4, fingerprint="ab" * 32)
    with pytest.raises(VectorsError) as exc:
        sv.check_compatible(num_layers=4, hidden_size=4, fingerprint="ab" * 32)
    msg = one_line(exc)
    assert "3 layers, model has 4" in msg
    assert "hidden size" not in msg
    assert "recalibrate" in msg
    with pytest.raises(VectorsError) as exc:
        sv.check_compatible(num_layers=3, hidden_size=8, fingerprint="ab" * 32)
    assert "hidden size 4, model has 8" in one_line(exc)
    with pytest.raises(VectorsError) as exc:
        sv.check_compatible(num_layers=3, hidden_size=4, fingerprint="ef" * 32)
    msg = one_line(exc)
    assert "fingerprint" in msg
    assert "layers" not in msg
    with pytest.raises(VectorsError) as exc:
        sv.check_compatible(num_layers=2, hidden_size=8, fingerprint="ef" * 32)
    msg = one_line(exc)
    for part in ("3 layers, model has 2", "hidden size 4, model has 8", "fingerprint"):
        assert part in msg


def test_corrupted_tensor_bytes_fail_the_digest() -> None:
    data = bytearray(make_set().to_bytes())
    data[-1] ^= 0x01  # last byte of the tensor data
    with pytest.raises(VectorIntegrityError) as exc:
        SteeringVectors.from_bytes(bytes(data))
    assert "digest" in one_line(exc)


def test_edited_metadata_fails_the_digest() -> None:
    data = make_set().to_bytes()
    edited = data.replace(b'"n_benign":"7"', b'"n_benign":"9"')
    assert edited != data
    with pytest.raises(VectorIntegrityError):
        SteeringVectors.from_bytes(edited)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[: len(d) - 5],  # truncated data
        lambda d: d[:20],  # truncated header
        lambda d: d[:3],  # too short for a header length
        lambda d: b"not a safetensors file at all, just some text",
        lambda d: d[:8] + b"\xff" * (len(d) - 8),  # garbage header
    ],
)
def test_unreadable_bytes_raise_vectors_error(mangle: object) -> None:
    data = make_set().to_bytes()
    with pytest.raises(VectorsError) as exc:
        SteeringVectors.from_bytes(mangle(data))  # type: ignore[operator]  # parametrised lambda
    one_line(exc)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    make_set().save(path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(VectorsError) as exc:
        SteeringVectors.load(path)
    assert str(path) in one_line(exc)
    with pytest.raises(VectorsError, match="no vector file"):
        SteeringVectors.load(tmp_path / "missing.safetensors")


def test_missing_tensor_or_metadata() -> None:
    meta = make_meta().to_strings()
    meta["format"] = FORMAT
    with pytest.raises(VectorsError, match="no tensor named 'vectors'"):
        SteeringVectors.from_bytes(save({"other": torch.zeros(3, 4)}, metadata=meta))
    without_k = {key: value for key, value in meta.items() if key != "k"}
    with pytest.raises(VectorsError, match="'k' is missing"):
        SteeringVectors.from_bytes(save({"vectors": torch.zeros(3, 4)}, metadata=without_k))
    with pytest.raises(VectorsError, match="metadata"):
        SteeringVectors.from_bytes(save({"vectors": torch.zeros(3, 4)}))
    wrong_format = dict(meta, format="something-else/9")
    with pytest.raises(VectorsError, match="format"):
        SteeringVectors.from_bytes(save({"vectors": torch.zeros(3, 4)}, metadata=wrong_format))
    bad_int = dict(meta, k="two")
    with pytest.raises(VectorsError, match="'k' has invalid value"):
        SteeringVectors.from_bytes(save({"vectors": torch.zeros(3, 4)}, metadata=bad_int))
    with pytest.raises(VectorsError, match="float32"):
        SteeringVectors.from_bytes(
            save({"vectors": torch.zeros(3, 4, dtype=torch.float16)}, metadata=meta)
        )


def test_digest_key_is_optional_for_hand_made_files() -> None:
    # Files written by other tools without a digest still load (integrity then rests on signing).
    meta = make_meta().to_strings()
    meta["format"] = FORMAT
    back = SteeringVectors.from_bytes(save({"vectors": torch.ones(3, 4)}, metadata=meta))
    assert torch.equal(back.vectors, torch.ones(3, 4))


def test_header_length_field_is_little_endian_u64() -> None:
    data = make_set().to_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert data[8 : 8 + n].startswith(b"{")
