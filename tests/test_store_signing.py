"""Envelope format, key decoding and set keys, independent of any backend."""

from __future__ import annotations

import base64
import secrets

import numpy as np
import pytest
from safetensors.numpy import save

from sarsteer_guard.errors import VectorIntegrityError, VectorsError
from sarsteer_guard.store import SigningKey, SigningKeyError, SigningKeys, VectorSetKey
from sarsteer_guard.store.redis_store import _split_prefix, redact_url
from sarsteer_guard.store.signing import MAGIC, decode_key

META = {
    "model_id": "tiny",
    "model_fingerprint": "fp",
    "num_layers": "2",
    "hidden_size": "3",
    "refusal_instruction": "No.",
    "prompt": "p",
    "k": "1",
    "lam": "0.5",
    "n_harmful": "1",
    "n_benign": "1",
    "calibration_digest": "d",
    "library_version": "0.1.0",
    "created_at": "t",
}
BLOB = bytes(save({"vectors": np.ones((2, 3), dtype=np.float32)}, metadata=META))
SET_ID = VectorSetKey.from_blob(BLOB).id


def test_envelope_layout_and_round_trip() -> None:
    keys = SigningKeys(SigningKey.generate())
    envelope = keys.sign(SET_ID, BLOB)
    assert envelope.startswith(MAGIC)
    assert envelope.endswith(BLOB)
    assert keys.current.key_id.encode() in envelope[:64]
    assert keys.verify(SET_ID, envelope) == BLOB
    _blob, key = keys.unwrap(SET_ID, envelope)
    assert key is keys.current
    with pytest.raises(VectorIntegrityError):
        keys.verify("f" * 32, envelope)  # bound to its id


def test_key_id_does_not_reveal_the_key() -> None:
    key = SigningKey.generate()
    assert key.secret.hex() not in repr(key)
    assert key.key_id not in key.secret.hex()
    assert len(key.key_id) == 16


def test_decode_key_hex_and_base64() -> None:
    raw = secrets.token_bytes(32)
    assert decode_key(raw.hex(), source="t").secret == raw
    assert decode_key(raw.hex().upper(), source="t").secret == raw
    assert decode_key(base64.b64encode(raw).decode(), source="t").secret == raw
    assert decode_key(base64.urlsafe_b64encode(raw).decode().rstrip("="), source="t").secret == raw
    with pytest.raises(SigningKeyError, match="32"):
        decode_key(secrets.token_hex(8), source="t")
    with pytest.raises(SigningKeyError, match="neither hex nor base64"):
        decode_key("not a key!!", source="t")


def test_keys_from_env() -> None:
    assert SigningKeys.from_env({}) is None
    now, old = secrets.token_hex(32), secrets.token_hex(32)
    keys = SigningKeys.from_env({"SARSTEER_VECTOR_KEY": now, "SARSTEER_VECTOR_KEY_PREVIOUS": old})
    assert keys is not None
    assert keys.current.secret.hex() == now
    assert keys.previous[0].secret.hex() == old
    with pytest.raises(SigningKeyError, match="SARSTEER_VECTOR_KEY"):
        SigningKeys.from_env({"SARSTEER_VECTOR_KEY": "abcd"})


def test_set_key_id_is_stable_and_ignores_alpha_free_fields() -> None:
    key = VectorSetKey("fp", "d", "No.", 1, 0.5)
    assert key == VectorSetKey.from_blob(BLOB)
    assert key.id == VectorSetKey("fp", "d", "No.", 1, 0.50).id
    assert VectorSetKey.from_metadata({**META, "lam": "5e-1", "created_at": "x"}).id == key.id
    assert len({key.id, VectorSetKey("fp", "d", "No.", 2, 0.5).id}) == 2
    # Pinned: stored sets are addressed by this id, so it must never drift.
    assert key.id == "011a7b7e2e8aba973d851eabaa482b4f"


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"", "shorter"),
        (b"\xff" * 16, "out of range"),
        (bytes(save({"vectors": np.ones((2, 3), dtype=np.float64)}, metadata=META)), "F64"),
        (bytes(save({"other": np.ones((2, 3), dtype=np.float32)}, metadata=META)), "no tensor"),
        (
            bytes(save({"vectors": np.ones((2, 3), dtype=np.float32)}, metadata={"k": "1"})),
            "lacks",
        ),
        (
            bytes(
                save(
                    {"vectors": np.ones((2, 3), dtype=np.float32)},
                    metadata={**META, "num_layers": "3"},
                )
            ),
            "metadata says",
        ),
    ],
)
def test_non_sets_are_rejected(blob: bytes, match: str) -> None:
    with pytest.raises(VectorsError, match=match):
        VectorSetKey.from_blob(blob)


def test_redis_url_helpers() -> None:
    assert redact_url("redis://user:s3cret@h:6380/1") == "redis://user:***@h:6380/1"
    assert redact_url("redis://h/0") == "redis://h/0"
    url, prefix = _split_prefix("rediss://h:1/0?prefix=a:b:&socket_keepalive=true")
    assert (url, prefix) == ("rediss://h:1/0?socket_keepalive=true", "a:b:")
