"""Calibration end to end: extraction -> ablation -> hooks -> generation, on constructed weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sarsteer_guard.calibration import (
    Activations,
    CalibrationConfig,
    calibrate,
    calibration_digest,
    capture_pairs,
)
from sarsteer_guard.defaults import DEFAULT_BENIGN, DEFAULT_HARMFUL, DEFAULT_PROMPT
from sarsteer_guard.errors import ManifestError
from sarsteer_guard.manifest import Manifest, load_manifest
from sarsteer_guard.models import Message, load_model
from sarsteer_guard.steering import SteeringHooks
from sarsteer_guard.testing.models import COMPLIANT_TEXT, REFUSAL_TEXT, planted_direction


def head(manifest: Manifest, n: int) -> Manifest:
    return Manifest(path=manifest.path, items=manifest.items[:n])


@pytest.fixture(scope="module")
def planted() -> Any:
    return load_model("tiny-planted")


@pytest.fixture(scope="module")
def calibrated(planted: Any) -> Any:
    harmful = head(load_manifest(DEFAULT_HARMFUL), 16)
    benign = head(load_manifest(DEFAULT_BENIGN), 16)
    return calibrate(planted, harmful, benign, CalibrationConfig(k=4, batch_size=8), progress=False)


def test_calibration_recovers_the_planted_refusal_direction(planted: Any, calibrated: Any) -> None:
    direction = planted_direction(planted.model, planted.processor.tokenizer)
    vectors = calibrated.vectors.vectors
    assert vectors.shape == (planted.num_layers, planted.hidden_size)
    cosines = torch.nn.functional.cosine_similarity(vectors[1:], direction[None], dim=-1)
    assert bool((cosines >= 0.95).all()), cosines
    assert float(vectors[0].norm()) < 1e-4  # the layer before the planted one carries nothing
    meta = calibrated.vectors.meta
    assert (meta.n_harmful, meta.n_benign, meta.k, meta.lam) == (16, 16, 4, 1.0)
    assert meta.model_fingerprint == planted.fingerprint


def _generate(lm: Any, audio: np.ndarray, hooks: SteeringHooks | None) -> Any:
    inputs = lm.encode([[Message(role="user", text=DEFAULT_PROMPT, audio=audio)]])
    with torch.inference_mode():
        if hooks is None:
            return lm.model.generate(
                **inputs, max_new_tokens=12, output_scores=True, return_dict_in_generate=True
            )
        with hooks:
            return lm.model.generate(
                **inputs, max_new_tokens=12, output_scores=True, return_dict_in_generate=True
            )


def test_steering_switches_generation_and_alpha_zero_is_bit_identical(
    planted: Any, calibrated: Any
) -> None:
    from sarsteer_guard.audio import load_audio

    clip = load_audio(load_manifest(DEFAULT_HARMFUL).items[40].audio, target_rate=16000)
    vectors = calibrated.vectors.vectors
    plain = _generate(planted, clip, None)
    prompt_len = planted.encode([[Message(role="user", text=DEFAULT_PROMPT, audio=clip)]])[
        "input_ids"
    ].shape[1]
    assert planted.decode(plain.sequences[0, prompt_len:]) == COMPLIANT_TEXT

    steered = _generate(planted, clip, SteeringHooks(planted.decoder_layers, vectors, alpha=0.1))
    assert planted.decode(steered.sequences[0, prompt_len:]) == REFUSAL_TEXT

    zero = _generate(planted, clip, SteeringHooks(planted.decoder_layers, vectors, alpha=0.0))
    assert torch.equal(zero.sequences, plain.sequences)
    for a, b in zip(zero.scores, plain.scores, strict=True):
        assert torch.equal(a, b)
    assert not any(layer._forward_hooks for layer in planted.decoder_layers)


def test_vectors_equal_an_independent_recomputation_from_saved_activations(
    calibrated: Any, tmp_path: Path
) -> None:
    path = tmp_path / "activations.safetensors"
    calibrated.activations.save(path)
    acts = Activations.load(path)
    for name in ("harmful_base", "harmful_refusal", "benign_base", "benign_refusal"):
        assert getattr(acts, name).dtype == torch.float32
        assert getattr(acts, name).shape[0] == 16
    hb = acts.harmful_base.double().numpy()
    hr = acts.harmful_refusal.double().numpy()
    bb = acts.benign_base.double().numpy()
    expected = []
    for layer in range(hb.shape[1]):
        d = (hr[:, layer] - hb[:, layer]).mean(axis=0)
        centred = bb[:, layer] - bb[:, layer].mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        u = vt[:4].T
        expected.append(d - 1.0 * u @ (u.T @ d))
    np.testing.assert_allclose(
        calibrated.vectors.vectors.numpy(), np.stack(expected), rtol=1e-4, atol=1e-5
    )


def test_batched_capture_matches_one_at_a_time(planted: Any) -> None:
    items = load_manifest(DEFAULT_BENIGN).items[:5]
    batched = capture_pairs(planted, items, CalibrationConfig(batch_size=5), progress=False)
    single = capture_pairs(planted, items, CalibrationConfig(batch_size=1), progress=False)
    for a, b in zip(batched, single, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_text_only_mode_uses_transcripts_and_changes_the_digest(planted: Any) -> None:
    harmful = head(load_manifest(DEFAULT_HARMFUL), 6)
    benign = head(load_manifest(DEFAULT_BENIGN), 6)
    config = CalibrationConfig(k=2, batch_size=6, text_only=True)
    result = calibrate(planted, harmful, benign, config, progress=False)
    assert result.vectors.vectors.shape == (planted.num_layers, planted.hidden_size)
    assert calibration_digest(harmful, benign, config) != calibration_digest(
        harmful, benign, CalibrationConfig(k=2)
    )


def test_empty_manifest_is_a_clear_error(planted: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ManifestError, match="has no items"):
        load_manifest(empty)
    nothing = Manifest(path=empty, items=())
    with pytest.raises(ManifestError, match="no harmful calibration turns"):
        calibrate(planted, nothing, load_manifest(DEFAULT_BENIGN), progress=False)


def test_audio_is_encoded_once_per_clip_with_identical_states(
    planted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sarsteer_guard import calibration
    from sarsteer_guard.models.base import find_audio_encoder

    items = load_manifest(DEFAULT_HARMFUL).items[:3]
    encoder = find_audio_encoder(planted.model)
    assert encoder is not None
    seen: list[int] = []
    handle = encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        shared = capture_pairs(planted, items, CalibrationConfig(batch_size=3), progress=False)
        assert seen == [3]  # 3 clips, 6 rows: the encoder ran once per clip
        monkeypatch.setattr(calibration, "find_audio_encoder", lambda model: None)
        seen.clear()
        full = capture_pairs(planted, items, CalibrationConfig(batch_size=3), progress=False)
        assert seen == [6]
    finally:
        handle.remove()
    for a, b in zip(shared, full, strict=True):
        assert torch.equal(a, b)
