"""Pictures for people: a calibration plot for engineers, an HTML audit report for compliance.

matplotlib is an optional extra (``pip install 'sarsteer-guard[plots]'``). It is imported
only when a picture is drawn, so the data-preparation functions and the rest of the
package work without it, and a missing install is a one-line :class:`GuardError`.
Nothing here touches pyplot's global state: figures are built as
:class:`matplotlib.figure.Figure` on an Agg canvas, so servers and tests can draw
concurrently without leaking windows or memory.
"""

from __future__ import annotations

from sarsteer_guard.report._mpl import PLOTS_HINT, require_matplotlib

__all__ = ["PLOTS_HINT", "require_matplotlib"]
