"""Plan and render spoken clips for a prompt list; write them with a JSONL manifest.

A :class:`SynthPlan` says which voices, rates, pitches and augmentations are allowed;
:func:`plan_clips` draws one choice per clip from a generator seeded by
``(seed, prompt index, variant)`` (so a clip never depends on the others), and
:func:`synthesize_manifest` renders them with espeak-ng and sox into 16 kHz FLAC files.
Invariant: the same prompts, plan and espeak-ng/sox builds give byte-identical files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from sarsteer_guard.errors import AudioError
from sarsteer_guard.manifest import ManifestItem, write_manifest

from .augment import Augmentation, apply_augmentation
from .prompts import Prompt

RATE = 16000
#: Silence kept around each trimmed clip (seconds).
EDGE_S = 0.1
#: Clips are peak-normalised to this level so loudness never tells sets apart.
PEAK = 0.35


@dataclass(frozen=True)
class SynthPlan:
    """Allowed choices per clip; each list is sampled uniformly.

    ``telephone_share`` and ``noise_share`` are the probabilities that a clip goes through
    the telephone channel / gets noise at a level drawn from ``snr_db``.
    """

    voices: tuple[str, ...] = ("en-us",)
    rates: tuple[int, ...] = (165,)
    pitches: tuple[int, ...] = (50,)
    speeds: tuple[float, ...] = (1.0,)
    telephone_share: float = 0.0
    noise_share: float = 0.0
    snr_db: tuple[float, ...] = (20.0,)
    variants: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("voices", "rates", "pitches", "speeds", "snr_db"):
            if not getattr(self, name):
                raise AudioError(f"synth plan: {name} is empty; give at least one value")
        for name in ("telephone_share", "noise_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise AudioError(f"synth plan: {name} {share:g} is not in 0-1")
        if self.variants < 1:
            raise AudioError("synth plan: variants must be at least 1")


@dataclass(frozen=True)
class ClipSpec:
    """One clip to render: what is said, how, and where it goes."""

    id: str
    prompt: Prompt
    voice: str
    rate: int
    pitch: int
    augmentation: Augmentation
    noise_seed: int


def plan_clips(prompts: Sequence[Prompt], plan: SynthPlan, prefix: str) -> list[ClipSpec]:
    """Draw every clip's voice, rate, pitch and augmentation (deterministic, order-free)."""
    specs: list[ClipSpec] = []
    for index, prompt in enumerate(prompts):
        for variant in range(plan.variants):
            rng = np.random.default_rng([plan.seed, index, variant])
            speed = float(rng.choice(plan.speeds))
            tel = bool(rng.random() < plan.telephone_share)
            noisy = bool(rng.random() < plan.noise_share)
            snr = float(rng.choice(plan.snr_db)) if noisy else None
            specs.append(
                ClipSpec(
                    id=f"{prefix}_{index + 1:04d}_{variant}",
                    prompt=prompt,
                    voice=str(rng.choice(plan.voices)),
                    rate=int(rng.choice(plan.rates)),
                    pitch=int(rng.choice(plan.pitches)),
                    augmentation=Augmentation(speed=speed, telephone=tel, snr_db=snr),
                    noise_seed=int(rng.integers(2**31)),
                )
            )
    return specs


def render_clip(spec: ClipSpec) -> np.ndarray:
    """Speak one clip: espeak-ng, trim, augment, peak-normalise (float32 at 16 kHz)."""
    from sarsteer_guard.synth.espeak import synthesize, trim_silence

    raw = synthesize(
        spec.prompt.text, rate=RATE, voice=spec.voice, speed=spec.rate, pitch=spec.pitch
    )
    first, end = trim_silence(raw)
    edge = round(EDGE_S * RATE)
    clip = raw[max(0, first - edge) : min(raw.size, end + edge)]
    rng = np.random.default_rng(spec.noise_seed)
    clip = apply_augmentation(clip, RATE, spec.augmentation, rng)
    peak = float(np.max(np.abs(clip))) if clip.size else 0.0
    if peak > 0.0:
        clip = clip * (PEAK / peak)
    out: np.ndarray = clip.astype(np.float32)
    return out


def check_voices(voices: Sequence[str]) -> None:
    """Speak one word per voice so a misspelt voice fails before hundreds of clips are made."""
    from sarsteer_guard.synth.espeak import synthesize

    for voice in dict.fromkeys(voices):
        try:
            synthesize("test", rate=RATE, voice=voice)
        except AudioError as error:
            raise AudioError(
                f"espeak-ng voice {voice!r} does not work; list voices with "
                f"'espeak-ng --voices=en' (variants: en-us+f3)"
            ) from error


def synthesize_manifest(
    prompts: Sequence[Prompt],
    out_dir: str | os.PathLike[str],
    name: str,
    plan: SynthPlan,
    *,
    progress: bool = True,
    workers: int = 2,
) -> tuple[Path, list[ClipSpec]]:
    """Render every planned clip to ``out_dir/audio/`` and write ``out_dir/NAME.jsonl``.

    Returns the manifest path and the clip specs (voice and augmentation per item, which a
    manifest does not carry). Stale files are never deleted: use a fresh folder per run.
    """
    from tqdm.auto import tqdm

    check_voices(plan.voices)
    root = Path(out_dir)
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    specs = plan_clips(prompts, plan, name)

    def render_one(spec: ClipSpec) -> ManifestItem:
        path = audio_dir / f"{spec.id}.flac"
        sf.write(path, render_clip(spec), RATE, format="FLAC", subtype="PCM_16")
        return ManifestItem(
            id=spec.id,
            audio=path.resolve(),
            transcript=spec.prompt.text,
            category=spec.prompt.category,
        )

    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(specs), desc=f"synth {name}", unit="clip", disable=not progress) as bar,
    ):
        items = []
        for item in pool.map(render_one, specs):
            items.append(item)
            bar.update(1)
    manifest = root / f"{name}.jsonl"
    header = (
        f"{len(items)} clips spoken by sarsteer-guard synth (espeak-ng, sox); seed {plan.seed}\n"
        f"voices {','.join(plan.voices)}; rates {','.join(map(str, plan.rates))}; "
        f"pitches {','.join(map(str, plan.pitches))}"
    )
    write_manifest(manifest, items, header=header)
    return manifest, specs
