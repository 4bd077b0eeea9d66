"""Lazy matplotlib access shared by the report modules."""

from __future__ import annotations

import importlib
import io
from typing import TYPE_CHECKING

from sarsteer_guard.errors import GuardError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: What to tell a user who asked for a picture without matplotlib installed.
PLOTS_HINT = "pictures need matplotlib; run: pip install 'sarsteer-guard[plots]'"


def require_matplotlib() -> None:
    """Import matplotlib or raise a one-line :class:`GuardError` saying how to install it.

    Called before any expensive work (the CLI checks before calibrating), so a missing
    extra is reported in a second rather than after a long run.

    Raises:
        GuardError: matplotlib cannot be imported.
    """
    try:
        importlib.import_module("matplotlib")
    except ImportError as error:
        raise GuardError(PLOTS_HINT) from error


def new_figure(width: float, height: float, dpi: int) -> Figure:
    """A figure on its own Agg canvas: no pyplot, no global backend switch."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes (no timestamp metadata, so output is reproducible)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def mpl_text(text: str, width: int = 40) -> str:
    """Make user text safe for matplotlib labels: no mathtext (``$``), bounded length."""
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("$", r"\$")
