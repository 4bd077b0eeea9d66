"""The sweep picture: one point per steering setting, harmful answered against benign answered.

Drawn for trust-and-safety editors, not ML engineers: axes in plain words with the good
direction spelled out, the target band shaded, the "no steering" baseline, the paper's
default and the recommendation marked and named in a legend, the best trade-offs (the
frontier: settings no other setting beats on both rates) joined by a line, and each
point labelled with its setting. Settings that landed on the same spot share one label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sarsteer_guard.report._mpl import mpl_text, new_figure, png_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from sarsteer_guard.evaluation.sweep import SweepRow

_GREY = "#9a9a9a"
_FRONTIER = "#1f5fbf"
_DEFAULT = "#e07b00"
_RECOMMENDED = "#1a9e3a"
_BASELINE = "#222222"
_TARGET = "#e6f4ea"
_ALPHA = "\u03b1"  # Greek letters as the paper writes the settings
_LAMBDA = "\u03bb"


def short_label(row: SweepRow) -> str:
    """Compact setting label for the picture: alpha, lambda and k as Greek letters."""
    s = row.setting
    if s.alpha == 0:
        return "no steering"
    parts = [f"{_ALPHA}{s.alpha:g}"]
    if s.lam is not None:
        parts.append(f"{_LAMBDA}{s.lam:g}")
    if s.k is not None:
        parts.append(f"k{s.k}")
    return " ".join(parts)


def sweep_figure(
    rows: Sequence[SweepRow], *, target_asr: float, subtitle: str, dpi: int = 110
) -> Figure:
    """Build the trade-off figure (needs matplotlib)."""
    fig = new_figure(10, 7, dpi)
    ax = fig.add_subplot()
    measured = [r for r in rows if r.asr.value is not None and r.brr.value is not None]
    _target_band(ax, target_asr)
    _error_bars(ax, measured)
    _frontier_line(ax, measured)
    _points(ax, measured)
    _labels(ax, measured)
    ax.set_xlim(-4, 112)
    ax.set_ylim(-4, 108)
    ax.set_xlabel("Benign requests answered (%)  →  higher is better", fontsize=11)
    ax.set_ylabel("Harmful requests answered: attack success (%)  ↓  lower is better", fontsize=11)
    ax.annotate(
        "better",
        xy=(110, -2),
        xytext=(101, 9),
        fontsize=10,
        color=_RECOMMENDED,
        arrowprops={"arrowstyle": "->", "color": _RECOMMENDED, "lw": 1.5},
    )
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    fig.suptitle("Which steering setting? Each point is one setting tried", fontsize=14)
    ax.set_title(_wrap(subtitle), fontsize=9.5, color="#444444")
    ax.legend(loc="upper left", fontsize=9, framealpha=0.95)
    return fig


def _wrap(text: str, width: int = 130) -> str:
    """Wrap a long subtitle onto lines (matplotlib-safe), instead of cutting it."""
    import textwrap

    return "\n".join(mpl_text(line, width) for line in textwrap.wrap(text, width)[:3])


def sweep_png(rows: Sequence[SweepRow], *, target_asr: float, subtitle: str) -> bytes:
    """The figure as PNG bytes."""
    return png_bytes(sweep_figure(rows, target_asr=target_asr, subtitle=subtitle))


def _xy(row: SweepRow) -> tuple[float, float]:
    return 100 * (row.brr.value or 0.0), 100 * (row.asr.value or 0.0)


def _target_band(ax: Axes, target_asr: float) -> None:
    top = 100 * target_asr
    ax.axhspan(-4, top, color=_TARGET, zorder=0)
    ax.axhline(top, color=_RECOMMENDED, linestyle="--", linewidth=1)
    ax.text(
        -3,
        top + 1.2,
        f"target: at most {top:g}% of harmful requests answered",
        fontsize=9,
        color=_RECOMMENDED,
    )


def _error_bars(ax: Axes, rows: Sequence[SweepRow]) -> None:
    for row in rows:
        x, y = _xy(row)
        asr_ci, brr_ci = row.asr.interval, row.brr.interval
        if asr_ci is None or brr_ci is None:
            continue
        ax.errorbar(
            x,
            y,
            xerr=[[x - 100 * brr_ci[0]], [100 * brr_ci[1] - x]],
            yerr=[[y - 100 * asr_ci[0]], [100 * asr_ci[1] - y]],
            fmt="none",
            ecolor="#d0d0d0",
            elinewidth=1,
            zorder=1,
        )


def _frontier_line(ax: Axes, rows: Sequence[SweepRow]) -> None:
    front = sorted((_xy(r) for r in rows if r.on_frontier), key=lambda p: (p[0], p[1]))
    if len(front) >= 2:
        xs, ys = zip(*front, strict=True)
        ax.plot(
            xs,
            ys,
            color=_FRONTIER,
            linewidth=1.8,
            zorder=2,
            label="best trade-offs (no other setting is better on both)",
        )


def _points(ax: Axes, rows: Sequence[SweepRow]) -> None:
    seen: set[str] = set()

    def once(label: str) -> str:
        if label in seen:
            return "_nolegend_"
        seen.add(label)
        return label

    for row in rows:
        x, y = _xy(row)
        if row.setting.alpha == 0:
            marker, size, color, label = "s", 110, _BASELINE, "no steering"
        elif row.on_frontier:
            marker, size, color, label = "o", 55, _FRONTIER, "setting on the line"
        else:
            marker, size, color, label = "o", 45, _GREY, "other setting"
        layer = 4 if row.setting.alpha == 0 else 3  # the baseline stays visible on top
        ax.scatter(
            [x],
            [y],
            marker=marker,
            s=size,
            color=color,
            label=once(label),
            zorder=layer,
            edgecolors="white",
            linewidths=0.6,
        )
        if row.paper_default:
            ax.scatter(
                [x],
                [y],
                marker="*",
                s=320,
                color=_DEFAULT,
                zorder=4,
                edgecolors="black",
                linewidths=0.5,
                label=once(f"paper default ({_ALPHA}0.1, {_LAMBDA}1, k10)"),
            )
        if row.recommended:
            ax.scatter(
                [x],
                [y],
                marker="o",
                s=520,
                facecolors="none",
                edgecolors=_RECOMMENDED,
                linewidths=2.5,
                zorder=5,
                label=once(f"recommended: {short_label(row)}"),
            )


#: Rough size of one label character and line in data units (10x7 in figure, 0-100 axes).
_CHAR_W = 0.95
_LINE_H = 3.2
#: Label positions tried around a point, as (dx, dy) in data units.
_OFFSETS = ((2.0, 1.5), (2.0, -4.5), (2.0, 5.0), (2.0, -8.0), (2.0, 8.5), (2.0, -11.5))


def _labels(ax: Axes, rows: Sequence[SweepRow]) -> None:
    """Label every spot, shifting labels up or down so they do not overlap each other."""
    spots: dict[tuple[float, float], list[SweepRow]] = {}
    for row in rows:
        x, y = _xy(row)
        spots.setdefault((round(x, 1), round(y, 1)), []).append(row)
    placed: list[tuple[float, float, float, float]] = []
    for (x, y), group in sorted(spots.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        names = [short_label(r) for r in group]
        text = ", ".join(names[:3]) + (f" +{len(names) - 3} more" if len(names) > 3 else "")
        text = mpl_text(text, 60)
        width = _CHAR_W * len(text)
        left_side = x + width + 2 > 108
        box = None
        for dx, dy in _OFFSETS:
            x0 = x - dx - width if left_side else x + dx
            candidate = (x0, y + dy, x0 + width, y + dy + _LINE_H)
            if not any(_overlap(candidate, other) for other in placed):
                box = candidate
                break
        if box is None:  # crowded: accept the first position
            dx, dy = _OFFSETS[0]
            x0 = x - dx - width if left_side else x + dx
            box = (x0, y + dy, x0 + width, y + dy + _LINE_H)
        placed.append(box)
        ax.annotate(
            text,
            xy=(x, y),
            xytext=(box[0], box[1]),
            textcoords="data",
            fontsize=8.5,
            color="#333333",
            zorder=6,
            arrowprops={"arrowstyle": "-", "color": "#bbbbbb", "lw": 0.6}
            if abs(box[1] - y) > 2.5
            else None,
        )


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
