"""Spoken request sets from text: prompt lists -> espeak-ng clips (+ sox augmentation) -> manifests.

Shared by ``sarsteer-guard synth`` and the model organism's data script. Everything is
reproducible from a seed: each clip's voice, rate, pitch and augmentation are drawn from a
generator seeded by ``(seed, prompt index, variant)``, so adding prompts never changes the
clips of earlier ones.
"""

from __future__ import annotations

from .augment import Augmentation, apply_augmentation
from .prompts import Prompt, parse_prompts, read_prompts
from .render import SynthPlan, plan_clips, synthesize_manifest

__all__ = [
    "Augmentation",
    "Prompt",
    "SynthPlan",
    "apply_augmentation",
    "parse_prompts",
    "plan_clips",
    "read_prompts",
    "synthesize_manifest",
]
