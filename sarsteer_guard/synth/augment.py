"""Channel augmentation with sox: speed, the 8 kHz mu-law telephone band, additive noise.

Speed and the telephone channel run through the ``sox`` binary (audio on stdin/stdout, no
temporary files). Noise is added here with a seeded NumPy generator rather than sox's
``synth noise``, whose generator cannot be seeded per clip: the same seed must give the same
bytes. sox runs with ``-R -D`` (repeatable, no dither): by default it dithers with a fresh
random seed, so re-runs differed. Invariant: output is float32 mono at the input's rate,
peak-limited to [-1, 1].
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from sarsteer_guard.audio.pcm import FloatArray
from sarsteer_guard.errors import AudioError

#: Telephone passband (Hz), as in G.711 narrowband speech.
TELEPHONE_BAND = (300, 3400)


@dataclass(frozen=True)
class Augmentation:
    """What to do to one clip. ``speed`` 1.0, ``telephone`` False, ``snr_db`` None = nothing."""

    speed: float = 1.0
    telephone: bool = False
    snr_db: float | None = None

    @property
    def label(self) -> str:
        """Short description for manifests and logs, e.g. ``speed0.9+tel+snr15``."""
        parts = []
        if self.speed != 1.0:
            parts.append(f"speed{self.speed:g}")
        if self.telephone:
            parts.append("tel")
        if self.snr_db is not None:
            parts.append(f"snr{self.snr_db:g}")
        return "+".join(parts) or "clean"


@functools.cache
def sox_available() -> bool:
    """True when the ``sox`` binary is on PATH."""
    return shutil.which("sox") is not None


def _sox(audio: FloatArray, rate: int, effects: list[str], out_args: list[str]) -> FloatArray:
    """Run ``sox`` on ``audio`` (WAV in, WAV out); returns float32 mono at the output rate."""
    exe = shutil.which("sox")
    if exe is None:
        raise AudioError("sox not found on PATH; install it (apt-get install sox)")
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype="FLOAT")
    cmd = [exe, "-q", "-R", "-D", "-t", "wav", "-", *out_args, "-t", "wav", "-", *effects]
    try:
        done = subprocess.run(  # noqa: S603 - argv list, no shell
            cmd, input=buf.getvalue(), capture_output=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as error:
        stderr = getattr(error, "stderr", b"") or b""
        detail = " ".join(stderr.decode("utf-8", "replace").split()) or str(error)
        raise AudioError(f"sox failed ({' '.join(effects)}): {detail}") from error
    data, _ = sf.read(io.BytesIO(done.stdout), dtype="float32", always_2d=True)
    out: FloatArray = data.mean(axis=1).astype(np.float32)
    return out


def telephone(audio: FloatArray, rate: int) -> FloatArray:
    """Band-limit to 300-3400 Hz, resample to 8 kHz mu-law and back to ``rate``."""
    lo, hi = TELEPHONE_BAND
    narrow = _sox(audio, rate, ["sinc", f"{lo}-{hi}"], ["-r", "8000", "-e", "mu-law", "-b", "8"])
    return _sox(narrow, 8000, [], ["-r", str(rate), "-e", "floating-point", "-b", "32"])


def change_speed(audio: FloatArray, rate: int, factor: float) -> FloatArray:
    """Play ``factor`` times faster (pitch follows, like a tape), keeping ``rate``."""
    if not 0.5 <= factor <= 2.0:
        raise AudioError(f"speed factor {factor:g} is out of range; use 0.5-2.0")
    return _sox(audio, rate, ["speed", f"{factor:g}", "rate", str(rate)], [])


def add_noise(audio: FloatArray, snr_db: float, rng: np.random.Generator) -> FloatArray:
    """Add white Gaussian noise at ``snr_db`` relative to the clip's mean power."""
    power = float(np.mean(np.square(audio, dtype=np.float64)))
    if power == 0.0:
        return audio.copy()
    noise_power = power / (10.0 ** (snr_db / 10.0))
    noise = rng.standard_normal(audio.shape[0]) * np.sqrt(noise_power)
    out: FloatArray = (audio + noise).astype(np.float32)
    return out


def apply_augmentation(
    audio: FloatArray, rate: int, aug: Augmentation, rng: np.random.Generator
) -> FloatArray:
    """Speed, then telephone channel, then noise (noise is heard through the line last)."""
    out = audio
    if aug.speed != 1.0:
        out = change_speed(out, rate, aug.speed)
    if aug.telephone:
        out = telephone(out, rate)
    if aug.snr_db is not None:
        out = add_noise(out, aug.snr_db, rng)
    clipped: FloatArray = np.clip(out, -1.0, 1.0).astype(np.float32)
    return clipped
