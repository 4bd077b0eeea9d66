"""Server-rendered SVG charts for the dashboard: no JavaScript, no image library.

Charts are inline SVG with presentation attributes only (the console's Content-
Security-Policy allows no inline style or script). Every label is escaped: policy
and rule names come from policy files. Each bar carries a ``<title>`` (hover text) and
each chart an ``aria-label``, so the numbers are readable without the picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date

from markupsafe import Markup, escape

#: Okabe-Ito colours (distinguishable with colour-blindness), then grey for "other".
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#8C6D1F")
OTHER = "#9AA0A6"
FONT = 'font-family="system-ui, sans-serif"'
#: Suffix of the series of shadow-mode refusals.
SHADOW = " (shadow)"


def nice_ticks(top: int, count: int = 5) -> list[int]:
    """Integer axis ticks from 0 covering ``top`` (steps of 1, 2 or 5 times a power of 10)."""
    if top <= 0:
        return [0, 1]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = max(1, next(s * power for s in (1, 2, 5, 10) if s * power >= raw))
    ticks = list(range(0, top + step, step))
    return ticks if ticks[-1] >= top else [*ticks, ticks[-1] + step]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _svg(width: int, height: int, label: str, body: list[str]) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{escape(label)}" class="chart">'
    )
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704 - every piece escaped above


def _empty(title: str) -> Markup:
    return _svg(
        600,
        60,
        title,
        [f'<text x="8" y="36" {FONT} font-size="14" fill="#5b6472">No refused turns here.</text>'],
    )


def stacked_days(
    days: Sequence[date], series: Sequence[tuple[str, Sequence[int]]], *, title: str
) -> Markup:
    """Bars per day, stacked by series (``series[i][1][d]`` = count on ``days[d]``)."""
    totals = [sum(values[d] for _, values in series) for d in range(len(days))]
    if not days or not any(totals):
        return _empty(title)
    left, right, top, bottom = 52, 230, 16, 44
    width, height = 900, 300
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = nice_ticks(max(totals))
    scale = plot_h / ticks[-1]
    slot = plot_w / len(days)
    bar = max(1.0, slot * 0.78)
    colors = series_colors([name for name, _ in series])
    body = [_y_axis(ticks, scale, left, top, plot_w, plot_h, "refused turns")]
    for d, day in enumerate(days):
        x = left + d * slot + (slot - bar) / 2
        base = float(top + plot_h)
        for name, values in series:
            count = values[d]
            if not count:
                continue
            h = count * scale
            base -= h
            color, opacity = colors[name]
            body.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{color}" fill-opacity="{opacity}"><title>{escape(day.isoformat())} · '
                f"{escape(name)}: {count}</title></rect>"
            )
    every = max(1, math.ceil(len(days) / 12))
    for d in range(0, len(days), every):
        x = left + d * slot + slot / 2
        label = days[d].strftime("%Y-%m-%d" if d == 0 else "%m-%d")
        body.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" {FONT} font-size="11" '
            f'text-anchor="middle" fill="#3b4350">{escape(label)}</text>'
        )
    body.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" {FONT} font-size="12" '
        'text-anchor="middle" fill="#3b4350">day (UTC)</text>'
    )
    body.append(_legend(colors, left + plot_w + 16, top))
    return _svg(width, height, title, body)


def _y_axis(
    ticks: list[int], scale: float, left: int, top: int, plot_w: int, plot_h: int, label: str
) -> str:
    parts = []
    for tick in ticks:
        y = top + plot_h - tick * scale
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#e3e7ec" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" {FONT} font-size="11" text-anchor="end" '
            f'fill="#3b4350">{tick}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#8a93a0"/>'
        f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" {FONT} '
        f'font-size="12" text-anchor="middle" fill="#3b4350">{escape(label)}</text>'
    )
    return "".join(parts)


def series_colors(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, opacity) per series: a policy's shadow series is its colour, lighter."""
    bases: list[str] = []
    for name in names:
        base = name.removesuffix(SHADOW)
        if base not in bases and name != "other":
            bases.append(base)
    out = {}
    for name in names:
        base = name.removesuffix(SHADOW)
        color = OTHER if name == "other" else PALETTE[bases.index(base) % len(PALETTE)]
        out[name] = (color, "0.45" if name.endswith(SHADOW) else "1")
    return out


def _legend(colors: dict[str, tuple[str, str]], x: float, y: float) -> str:
    parts = []
    for index, (name, (color, opacity)) in enumerate(colors.items()):
        row = y + index * 20
        parts.append(
            f'<rect x="{x:.1f}" y="{row:.1f}" width="12" height="12" fill="{color}" '
            f'fill-opacity="{opacity}"/>'
            f'<text x="{x + 18:.1f}" y="{row + 10:.1f}" {FONT} font-size="12" fill="#1d2430">'
            f"{escape(_cut(name, 30))}<title>{escape(name)}</title></text>"
        )
    return "".join(parts)


def hbars(
    items: Sequence[tuple[str, int]], *, title: str, unit: str, color: str, width: int = 560
) -> Markup:
    """One horizontal bar per item, labelled with its name and count (``width`` in px)."""
    if not items or not any(n for _, n in items):
        return _empty(title)
    label_w, row_h, top = 170, 24, 8
    plot_w = width - label_w - 50
    height = top * 2 + row_h * len(items) + 22
    most = max(n for _, n in items)
    body = []
    for index, (name, count) in enumerate(items):
        y = top + index * row_h
        w = max(1.0, plot_w * count / most) if count else 0.0
        body.append(
            f'<text x="{label_w - 8}" y="{y + 16}" {FONT} font-size="12" text-anchor="end" '
            f'fill="#1d2430">{escape(_cut(name, 24))}<title>{escape(name)}</title></text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{color}"><title>{escape(name)}: {count} {escape(unit)}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 16}" {FONT} font-size="12" '
            f'fill="#1d2430">{count}</text>'
        )
    body.append(
        f'<text x="{label_w + plot_w / 2:.1f}" y="{height - 4}" {FONT} font-size="12" '
        f'text-anchor="middle" fill="#3b4350">{escape(unit)}</text>'
    )
    return _svg(width, height, title, body)
