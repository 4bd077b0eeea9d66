"""Real synthesised speech via espeak-ng (synth, the organism's data and the test kit).

webrtcvad calls tones and white noise speech, so segmenter and decoder tests need
real speech; espeak-ng is small, offline and deterministic, which makes it the test
kit's speech source. :func:`speech_with_pauses` builds a recording with known
ground-truth utterance boundaries, found by trimming each synthesised clip's leading
and trailing near-silence before placing it.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from collections.abc import Sequence

import numpy as np
import soundfile as sf

from sarsteer_guard.audio.pcm import FloatArray, check_rate, resample
from sarsteer_guard.errors import AudioError

_ESPEAK = "espeak-ng"
#: Samples below this absolute level (about -50 dBFS) count as silence when trimming.
SILENCE_LEVEL = 0.003


@functools.cache
def espeak_available() -> bool:
    """Return True if espeak-ng is on PATH and runs (use it to skip speech tests)."""
    exe = shutil.which(_ESPEAK)
    if exe is None:
        return False
    try:
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            [exe, "--version"], capture_output=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def synthesize(
    text: str,
    *,
    rate: int = 16000,
    voice: str = "en-us",
    speed: int = 165,
    pitch: int = 50,
) -> FloatArray:
    """Synthesise ``text`` with espeak-ng as float32 mono at ``rate``.

    Args:
        text: what to say (passed on stdin, so leading dashes are safe).
        rate: output sample rate; espeak-ng's native 22.05 kHz is resampled with soxr.
        voice: espeak-ng voice, e.g. ``en-us``, ``en-gb``, ``en-us+f3``.
        speed: words per minute (espeak-ng ``-s``, 80-450).
        pitch: 0-99 (espeak-ng ``-p``).

    Raises:
        AudioError: espeak-ng is missing or failed.
    """
    out_rate = check_rate(rate, "rate")
    exe = shutil.which(_ESPEAK)
    if exe is None:
        raise AudioError(
            "espeak-ng not found on PATH; install it (apt-get install espeak-ng) "
            "or skip speech tests with espeak_available()"
        )
    cmd = [exe, "--stdout", "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch))]
    try:
        result = subprocess.run(  # noqa: S603 - argv list, no shell; text goes on stdin
            cmd, input=text.encode("utf-8"), capture_output=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as error:
        stderr = getattr(error, "stderr", b"") or b""
        detail = " ".join(stderr.decode("utf-8", "replace").split()) or str(error)
        raise AudioError(
            f"espeak-ng failed for voice {voice!r}: {detail}; check the voice"
        ) from error
    try:
        data, native = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"espeak-ng produced no audio for {text!r}; pass text to speak") from error
    if data.shape[0] == 0:
        raise AudioError(f"espeak-ng produced no audio for {text!r}; pass text to speak")
    return resample(data.mean(axis=1), int(native), out_rate)


def trim_silence(x: FloatArray, level: float = SILENCE_LEVEL) -> tuple[int, int]:
    """Return ``(first, end)`` sample indices of the non-silent span of ``x``."""
    loud = np.flatnonzero(np.abs(x) > level)
    if loud.size == 0:
        return 0, 0
    return int(loud[0]), int(loud[-1]) + 1


def speech_with_pauses(
    texts: Sequence[str],
    pause_s: float = 1.0,
    rate: int = 16000,
    *,
    lead_s: float | None = None,
    voice: str = "en-us",
    speed: int = 165,
) -> tuple[FloatArray, list[tuple[float, float]]]:
    """Build a recording of ``texts`` separated by ``pause_s`` of silence.

    Each clip is trimmed to its non-silent span, so the returned boundaries
    ``[(start_s, end_s), ...]`` are the true utterance extents. ``lead_s`` of silence
    (default ``pause_s``) goes before the first and after the last utterance.
    """
    out_rate = check_rate(rate, "rate")
    lead = pause_s if lead_s is None else lead_s
    gap = np.zeros(round(pause_s * out_rate), dtype=np.float32)
    edge = np.zeros(round(lead * out_rate), dtype=np.float32)
    parts: list[FloatArray] = [edge]
    bounds: list[tuple[float, float]] = []
    cursor = edge.size
    for i, text in enumerate(texts):
        clip = synthesize(text, rate=out_rate, voice=voice, speed=speed)
        first, end = trim_silence(clip)
        clip = clip[first:end]
        if i:
            parts.append(gap)
            cursor += gap.size
        parts.append(clip)
        bounds.append((cursor / out_rate, (cursor + clip.size) / out_rate))
        cursor += clip.size
    parts.append(edge)
    return np.concatenate(parts).astype(np.float32), bounds
