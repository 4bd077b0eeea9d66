"""Named steering strengths, so editors can write ``preset: strict`` instead of numbers.

A preset sets only ``alpha``. ``k`` and ``lambda`` decide which vectors are built
(see ``PolicyDecision.vector_key``), so keeping them out of presets means every preset
is served from one vector set; they come from ``calibration`` (the paper's k 10,
lambda 1.0 unless changed) or from explicit numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PresetName = Literal["strict", "balanced", "permissive"]


@dataclass(frozen=True, slots=True)
class Preset:
    """A named alpha with the reason to pick it."""

    name: PresetName
    alpha: float
    description: str


PRESETS: dict[str, Preset] = {
    "strict": Preset(
        "strict",
        0.2,
        "twice the paper's strength: more refusals of borderline requests; for children's "
        "channels and high-risk surfaces",
    ),
    "balanced": Preset(
        "balanced",
        0.1,
        "the paper's setting (alpha 0.1 with k 10, lambda 1.0): refuses harmful requests "
        "while keeping benign answers nearly unchanged",
    ),
    "permissive": Preset(
        "permissive",
        0.05,
        "half the paper's strength: fewer refusals of benign requests; for trusted or expert users",
    ),
}

#: What a policy uses when neither defaults nor a rule names a preset or an alpha.
DEFAULT_PRESET: PresetName = "balanced"
