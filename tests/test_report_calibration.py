"""Calibration picture: the plotted numbers, the PNG, the CLI flag and the missing-extra hint."""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import pytest
import torch

from sarsteer_guard.calibration import Activations
from sarsteer_guard.cli import main
from sarsteer_guard.errors import VectorsError
from sarsteer_guard.report.calibration_plot import (
    DPI,
    FIGSIZE,
    calibration_summary,
    plot_calibration,
)
from sarsteer_guard.steering.extract import refusal_vectors
from sarsteer_guard.steering.vectors import SteeringVectors, VectorMeta

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def make_vectors(vectors: torch.Tensor, *, k: int, n: int) -> SteeringVectors:
    layers, hidden = vectors.shape
    meta = VectorMeta(
        model_id="unit-test",
        model_fingerprint="f" * 64,
        num_layers=layers,
        hidden_size=hidden,
        refusal_instruction="I cannot assist with that.",
        prompt="p",
        k=k,
        lam=1.0,
        n_harmful=n,
        n_benign=n,
        calibration_digest="d" * 64,
    )
    return SteeringVectors(vectors=vectors, meta=meta)


@pytest.fixture
def planted() -> tuple[Activations, SteeringVectors]:
    """Layer 0: benign turns vary only along e0 and d = 3 e0 + 4 e1, so v = 4 e1 exactly.

    Layer 1: d = 2 e2 is orthogonal to the benign variation, so nothing is removed.
    """
    n, hidden = 4, 6
    e = torch.eye(hidden)
    benign = torch.zeros(n, 2, hidden)
    benign[:, :, 0] = torch.tensor([-3.0, -1.0, 1.0, 3.0])[:, None]
    harmful_base = torch.zeros(n, 2, hidden)
    harmful_base[:, 0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # mean 2.5, std sqrt(1.25)
    harmful_base[:, 1, 2] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # mean 0.5, std 0.5
    benign[:, 0, 1] = torch.tensor([0.0, 1.0, 1.0, 0.0])  # mean 0.5, std 0.5, uncorrelated
    harmful_refusal = harmful_base.clone()
    harmful_refusal[:, 0] += 3 * e[0] + 4 * e[1]
    harmful_refusal[:, 1] += 2 * e[2]
    acts = Activations(harmful_base, harmful_refusal, benign, benign.clone())
    vectors = refusal_vectors(harmful_base, harmful_refusal, benign, k=1)
    return acts, make_vectors(vectors, k=1, n=n)


def test_summary_matches_direct_computation(
    planted: tuple[Activations, SteeringVectors],
) -> None:
    summary = calibration_summary(*planted)
    assert summary["layers"] == [0, 1]
    assert summary["d_norm"] == pytest.approx([5.0, 2.0])
    assert summary["v_norm"] == pytest.approx([4.0, 2.0])
    assert summary["removed_fraction"] == pytest.approx([9 / 25, 0.0], abs=1e-7)
    assert summary["cosine_dv"] == pytest.approx([0.8, 1.0])
    # Layer 0 projects on e1: harmful 1..4, benign 0/1; layer 1 on e2: harmful 0/1, benign 0.
    assert summary["harmful_mean"] == pytest.approx([2.5, 0.5])
    assert summary["harmful_std"] == pytest.approx([math.sqrt(1.25), 0.5])
    assert summary["benign_mean"] == pytest.approx([0.5, 0.0])
    assert summary["benign_std"] == pytest.approx([0.5, 0.0])
    sep0 = (2.5 - 0.5) / math.sqrt((1.25 + 0.25) / 2)
    sep1 = 0.5 / math.sqrt(0.25 / 2)
    assert summary["separation"] == pytest.approx([sep0, sep1])
    assert summary["best_layer"] == (0 if sep0 > sep1 else 1)
    assert (summary["n_harmful"], summary["n_benign"], summary["k"]) == (4, 4, 1)


def test_summary_on_random_states_agrees_with_numpy_formulas() -> None:
    g = torch.Generator().manual_seed(3)
    hb, hr, bb = (torch.randn(7, 3, 10, generator=g) for _ in range(3))
    vectors = refusal_vectors(hb, hr, bb, k=3)
    summary = calibration_summary(Activations(hb, hr, bb, bb), make_vectors(vectors, k=3, n=7))
    d = (hr.double() - hb.double()).mean(0).numpy()
    v = vectors.double().numpy()
    for layer in range(3):
        dn, vn = float((d[layer] ** 2).sum() ** 0.5), float((v[layer] ** 2).sum() ** 0.5)
        assert summary["d_norm"][layer] == pytest.approx(dn, rel=1e-6)
        assert summary["v_norm"][layer] == pytest.approx(vn, rel=1e-6)
        removed = float(((d[layer] - v[layer]) ** 2).sum()) / dn**2
        assert summary["removed_fraction"][layer] == pytest.approx(removed, rel=1e-5)
        assert 0 < removed < 1  # a random d always loses some of itself to 3 directions
        proj = hb[:, layer].double().numpy() @ (v[layer] / vn)
        assert summary["harmful_mean"][layer] == pytest.approx(proj.mean(), rel=1e-6)
        assert summary["harmful_std"][layer] == pytest.approx(proj.std(), rel=1e-6)


def test_zero_vector_layer_is_undefined_not_zero(
    planted: tuple[Activations, SteeringVectors],
) -> None:
    acts, vectors = planted
    zeroed = vectors.vectors.clone()
    zeroed[1] = 0
    summary = calibration_summary(acts, make_vectors(zeroed, k=1, n=4))
    assert math.isnan(summary["separation"][1])
    assert math.isnan(summary["harmful_mean"][1])
    assert summary["best_layer"] == 0


def test_mismatched_activations_are_refused(
    planted: tuple[Activations, SteeringVectors],
) -> None:
    acts, _ = planted
    other = make_vectors(torch.ones(3, 6), k=1, n=4)
    with pytest.raises(VectorsError, match="same calibration"):
        calibration_summary(acts, other)


def test_plot_writes_png_of_expected_size(
    planted: tuple[Activations, SteeringVectors], tmp_path: Path
) -> None:
    pyplot_before = "matplotlib.pyplot" in sys.modules
    out = plot_calibration(*planted, tmp_path / "sub" / "calib.png", title="price $5 $x$")
    data = out.read_bytes()
    assert png_size(data) == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
    assert len(data) > 20_000  # four panels of drawing, not a blank canvas
    if not pyplot_before:
        assert "matplotlib.pyplot" not in sys.modules  # no global pyplot state


def test_cli_calibrate_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "calib.png"
    args = ["calibrate", "--model", "tiny-planted", "--text-only", "--limit", "4", "--k", "2"]
    args += ["--out", str(tmp_path / "v.safetensors"), "--plot", str(plot), "--no-progress"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["plot"] == str(plot)
    assert png_size(plot.read_bytes()) == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))


def test_cli_calibrate_plot_without_matplotlib(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    out = tmp_path / "v.safetensors"
    args = ["calibrate", "--model", "tiny-planted", "--text-only", "--limit", "4", "--k", "2"]
    args += ["--out", str(out), "--plot", str(tmp_path / "p.png"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sarsteer-guard: error: pictures need matplotlib; run: "
                   "pip install 'sarsteer-guard[plots]'"]  # fmt: skip
    assert not out.exists()  # refused before calibrating, not after
