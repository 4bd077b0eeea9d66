"""Calibration picture: what the benign projection did to each layer's refusal direction.

Engineers tuning ``k``/``lambda`` or picking ``layer_ids`` need three things per layer that
the vector file alone does not show: how long the raw mean difference ``d_l`` is against
the steered ``v_l``, how much of ``d_l`` the benign subspace took away, and whether the
refusal direction actually separates harmful from benign turns there.
:func:`calibration_summary` computes those numbers (no matplotlib, testable on its own);
:func:`plot_calibration` only draws them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import torch

from sarsteer_guard.errors import VectorsError
from sarsteer_guard.report._mpl import mpl_text, new_figure, png_bytes
from sarsteer_guard.steering.extract import mean_difference

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from sarsteer_guard.calibration import Activations
    from sarsteer_guard.steering.vectors import SteeringVectors

__all__ = ["CalibrationSummary", "calibration_summary", "plot_calibration"]

#: Figure size in inches and resolution; the PNG is ``width*dpi x height*dpi`` pixels.
FIGSIZE = (9.0, 11.0)
DPI = 100

_HARMFUL = "tab:red"
_BENIGN = "tab:blue"


class CalibrationSummary(TypedDict):
    """Per-layer numbers behind the calibration picture (lists indexed by layer)."""

    layers: list[int]
    d_norm: list[float]
    """``||d_l||``: raw harmful mean difference (refusal instruction minus base)."""
    v_norm: list[float]
    """``||v_l||``: the stored steering vector, after projecting out the benign subspace."""
    removed_fraction: list[float]
    """``||d_l - v_l||^2 / ||d_l||^2``: share of ``d_l``'s energy the projection removed."""
    cosine_dv: list[float]
    """Cosine between ``d_l`` and ``v_l`` (1 = projection changed only the length)."""
    harmful_mean: list[float]
    """Mean of harmful base states projected on ``unit(v_l)`` (NaN where ``v_l`` is zero)."""
    harmful_std: list[float]
    benign_mean: list[float]
    """Mean of benign base states projected on ``unit(v_l)``."""
    benign_std: list[float]
    separation: list[float]
    """``(harmful_mean - benign_mean) / pooled std``; NaN where undefined (zero ``v_l``/spread)."""
    best_layer: int | None
    """Layer with the largest ``|separation|``, lowest on ties (None when none is defined)."""
    n_harmful: int
    n_benign: int
    k: int
    lam: float
    model_id: str


def _check_shapes(activations: Activations, vectors: torch.Tensor) -> None:
    expected = tuple(vectors.shape)
    for name in ("harmful_base", "harmful_refusal", "benign_base"):
        states: torch.Tensor = getattr(activations, name)
        if states.ndim != 3 or tuple(states.shape[1:]) != expected:
            raise VectorsError(
                f"activations.{name} has shape {tuple(states.shape)} but the vectors are "
                f"[layers, hidden] {expected}: plot activations saved by the same calibration"
            )


def _projection_stats(
    states: torch.Tensor, unit: torch.Tensor, defined: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer mean and population std of ``states`` projected on ``unit`` (float64).

    Population std (no Bessel correction) so a single calibration turn still gives a band.
    Layers without a direction (zero ``v_l``) get NaN, which breaks the plotted line there
    instead of drawing a misleading zero.
    """
    proj = torch.einsum("nlh,lh->nl", states.double(), unit)
    mean = torch.where(defined, proj.mean(dim=0), torch.nan)
    std = torch.where(defined, proj.std(dim=0, correction=0), torch.nan)
    return mean, std


def calibration_summary(activations: Activations, vectors: SteeringVectors) -> CalibrationSummary:
    """Compute the per-layer numbers that :func:`plot_calibration` draws.

    ``d_l`` is recomputed from the activations with
    :func:`~sarsteer_guard.steering.extract.mean_difference`, so the picture shows what
    the projection did rather than trusting a second copy of ``d``.

    Raises:
        VectorsError: activations and vectors have different ``[layers, hidden]``.
    """
    v = vectors.vectors.detach().cpu().double()
    _check_shapes(activations, v)
    d = mean_difference(activations.harmful_refusal, activations.harmful_base).cpu().double()
    d_norm = d.norm(dim=-1)
    v_norm = v.norm(dim=-1)
    removed = (d - v).norm(dim=-1).square() / d_norm.square().clamp_min(1e-300)
    removed = torch.where(d_norm > 0, removed, torch.zeros_like(removed))
    cosine = torch.nn.functional.cosine_similarity(d, v, dim=-1, eps=1e-300)
    unit = v / v_norm.clamp_min(1e-300)[:, None]
    h_mean, h_std = _projection_stats(activations.harmful_base.cpu(), unit, v_norm > 0)
    b_mean, b_std = _projection_stats(activations.benign_base.cpu(), unit, v_norm > 0)
    pooled = ((h_std.square() + b_std.square()) / 2).sqrt()
    separation = (h_mean - b_mean) / pooled
    separation = torch.where((pooled > 0) & (v_norm > 0), separation, torch.nan)
    defined = [(abs(float(s)), -i) for i, s in enumerate(separation) if not math.isnan(float(s))]
    meta = vectors.meta
    return CalibrationSummary(
        layers=list(range(v.shape[0])),
        d_norm=d_norm.tolist(),
        v_norm=v_norm.tolist(),
        removed_fraction=removed.tolist(),
        cosine_dv=cosine.tolist(),
        harmful_mean=h_mean.tolist(),
        harmful_std=h_std.tolist(),
        benign_mean=b_mean.tolist(),
        benign_std=b_std.tolist(),
        separation=separation.tolist(),
        best_layer=-max(defined)[1] if defined else None,
        n_harmful=int(activations.harmful_base.shape[0]),
        n_benign=int(activations.benign_base.shape[0]),
        k=meta.k,
        lam=meta.lam,
        model_id=meta.model_id,
    )


def _percent(value: float) -> str:
    if 0 < value < 1:
        return "<1%"
    return f"{value:.0f}%"


def _layer_axis(ax: Axes, layers: list[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    if len(layers) <= 16:
        ax.set_xticks(layers)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=16))
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.grid(True, axis="y", alpha=0.3)


def _draw(summary: CalibrationSummary, title: str | None) -> bytes:
    layers = summary["layers"]
    fig = new_figure(*FIGSIZE, DPI)
    axes = fig.subplots(4, 1, sharex=True, height_ratios=[1.0, 0.8, 1.3, 0.8])
    fig.suptitle(
        mpl_text(
            title
            or f"SARSteer calibration: {summary['model_id']} — k={summary['k']}, "
            f"λ={summary['lam']:g}, {summary['n_harmful']} harmful / "
            f"{summary['n_benign']} benign turns",
            width=110,
        ),
        fontsize=12,
    )

    ax = axes[0]
    ax.plot(
        layers,
        summary["d_norm"],
        "o-",
        color="0.6",
        linewidth=5,
        markersize=10,
        alpha=0.6,
        label=r"$\|d_l\|$  raw mean difference",
    )
    ax.plot(
        layers,
        summary["v_norm"],
        "s--",
        color="tab:orange",
        linewidth=1.8,
        label=r"$\|v_l\|$  steering vector (benign subspace projected out)",
    )
    ax.set_ylabel("L2 norm")
    ax.set_ylim(bottom=0)
    ax.set_title("Refusal direction length per layer", loc="left", fontsize=10)
    ax.legend(loc="best", fontsize=9)
    _layer_axis(ax, layers)

    ax = axes[1]
    percent = [100.0 * f for f in summary["removed_fraction"]]
    bars = ax.bar(layers, percent, color="tab:purple", alpha=0.75, width=0.6)
    if len(layers) <= 32:
        ax.bar_label(bars, labels=[_percent(p) for p in percent], fontsize=8, padding=2)
    ax.set_ylim(0, 115)
    ax.set_yticks([0, 25, 50, 75, 100])
    ax.set_ylabel(r"% of $\|d_l\|^2$ removed")
    ax.set_title(
        f"Share of $d_l$ removed by projecting out the top-{summary['k']} benign directions"
        r"   ($v_l = d_l - \lambda\, U_k U_k^\top d_l$)",
        loc="left",
        fontsize=10,
    )
    _layer_axis(ax, layers)

    ax = axes[2]
    series = (
        (
            "harmful",
            _HARMFUL,
            summary["n_harmful"],
            summary["harmful_mean"],
            summary["harmful_std"],
        ),
        ("benign", _BENIGN, summary["n_benign"], summary["benign_mean"], summary["benign_std"]),
    )
    for name, color, n, mean, std in series:
        ax.plot(layers, mean, "o-", color=color, label=f"{name} turns (n={n}), mean ± std")
        ax.fill_between(
            layers,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color=color,
            alpha=0.2,
            linewidth=0,
        )
    ax.set_ylabel(r"$\langle h_l,\ v_l / \|v_l\| \rangle$")
    ax.set_title(
        "Base states (no refusal instruction) projected on the steering direction",
        loc="left",
        fontsize=10,
    )
    ax.legend(loc="best", fontsize=9)
    _layer_axis(ax, layers)

    ax = axes[3]
    sep = [0.0 if math.isnan(s) else s for s in summary["separation"]]
    colors = ["tab:green" if i == summary["best_layer"] else "0.6" for i in layers]
    ax.bar(layers, sep, color=colors, width=0.6)
    for i, s in zip(layers, summary["separation"], strict=True):
        if math.isnan(s):
            ax.annotate("n/a", (i, 0), ha="center", va="center", fontsize=8, color="0.4")
    low, high = min(0.0, *sep), max(0.0, *sep)
    pad = 0.15 * (high - low) or 1.0
    ax.set_ylim(low - pad, high + pad)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_ylabel("std units")
    best = summary["best_layer"]
    ax.set_title(
        "Separation: (harmful mean \u2212 benign mean) / pooled std"
        + (
            f"   — strongest at layer {best} ({summary['separation'][best]:+.2f})"
            if best is not None
            else ""
        ),
        loc="left",
        fontsize=10,
    )
    ax.set_xlabel("decoder layer")
    _layer_axis(ax, layers)
    return png_bytes(fig)


def plot_calibration(
    activations: Activations,
    vectors: SteeringVectors,
    path: Path,
    *,
    title: str | None = None,
) -> Path:
    """Write the calibration picture as a PNG (``FIGSIZE * DPI`` pixels) and return its path.

    Raises:
        GuardError: matplotlib is not installed (the message says how to install it).
        VectorsError: activations and vectors do not belong together.
    """
    summary = calibration_summary(activations, vectors)
    data = _draw(summary, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
