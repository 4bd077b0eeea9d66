"""The shipped organism (``tiny-trained``) still behaves as recorded on its held-out clips.

``sarsteer_guard/data/organism/results.json`` records, for the 16 + 16 shipped held-out clips,
the share answered without and with steering (``scripts/organism/ship.py`` wrote it by running
this same demo). A change anywhere in loading, calibration, steering or generation that moves
those numbers by more than :data:`TOLERANCE` (two clips of sixteen) fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from sarsteer_guard.cli import main
from sarsteer_guard.cli.demo import ORGANISM_DIR, rates, recorded
from sarsteer_guard.models import load_model
from sarsteer_guard.models.builtin import shipped_model_dir

#: Allowed drift of each recorded rate (two clips out of sixteen).
TOLERANCE = 2 / 16


def test_shipped_weights_are_in_the_hub_layout_and_small() -> None:
    folder = shipped_model_dir("tiny-trained")
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
    assert "language_model.lm_head.weight" in keys
    assert all(
        k.split(".")[0] in {"language_model", "audio_tower", "multi_modal_projector"} for k in keys
    )
    size = sum(p.stat().st_size for p in ORGANISM_DIR.rglob("*") if p.is_file())
    assert size < 8_000_000


def test_tiny_trained_loads_as_a_builtin_with_head_size_64() -> None:
    lm = load_model("tiny-trained", device="cpu")
    text = lm.model.config.text_config
    assert text.hidden_size // text.num_attention_heads == 64
    assert lm.is_test_model


def test_held_out_numbers_match_the_recorded_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out", str(tmp_path), "--clips", "0", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    expected = recorded()["regression"]
    assert len(rows) == expected["clips"] == 32
    for arm in ("unsteered", "steered"):
        asr, brr = rates(rows, arm)
        assert asr == pytest.approx(expected[arm]["asr"], abs=TOLERANCE), arm
        assert brr == pytest.approx(expected[arm]["brr"], abs=TOLERANCE), arm


def test_demo_states_the_measured_held_out_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The closing sentence quotes results.json, so it cannot drift from the shipped model."""
    assert main(["demo", "--out", str(tmp_path), "--clips", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    measured = recorded()["measured"]
    steered, pick = measured["grid"]["steered"], measured["grid_pick"]
    assert "not a safety evaluation of any real model" in out
    assert f"(alpha {pick['alpha']:g}, lambda {pick['lambda']:g}, k {pick['k']})" in out
    assert f"{steered['asr']:.0%} of harmful clips answered" in out
    assert f"{steered['brr']:.0%} of benign clips answered" in out


def test_demo_steers_with_the_recorded_setting(tmp_path: Path) -> None:
    """The demo's policy carries the alpha, lambda and k its validation sweep picked."""
    from sarsteer_guard.policy import load_policy

    assert main(["demo", "--out", str(tmp_path), "--clips", "1", "--json"]) == 0
    policy = load_policy(tmp_path / "demo-policy.yaml")
    shipped = recorded()
    assert policy.calibration.k == shipped["demo_k"]
    assert policy.calibration.lam == pytest.approx(shipped["demo_lambda"])
    assert policy.defaults.alpha == pytest.approx(shipped["demo_alpha"])
