"""How long a clip sent to the model may be: the one check every entry point shares.

The CLI (``respond``), the Guard (where a turn's audio enters) and the server (at
``turn.end``) all call :func:`check_clip_length`, so a clip too short for the model's
audio front end is refused with the same documented sentence everywhere, before any
model work; below about 0.1 s the feature extractor yields no frames and the model
fails deep inside transformers instead.
"""

from __future__ import annotations

from sarsteer_guard.errors import AudioError

__all__ = ["MAX_CLIP_S", "MIN_CLIP_S", "check_clip_length", "describe_duration"]

#: Shortest clip accepted, in seconds (the documented minimum).
MIN_CLIP_S = 0.1
#: Longest clip decoded for the model by default: the audio encoder hears 30 s, and the
#: Guard refuses longer turns, so decoding more is wasted work (or a decompression bomb).
MAX_CLIP_S = 30.0
#: Resampling can round a clip of exactly MIN_CLIP_S down by a sample or two.
_TOLERANCE_S = 0.001


def check_clip_length(
    samples: int, rate: int, *, name: str = "the turn", max_s: float | None = None
) -> float:
    """Return the clip's length in seconds, or raise if it is outside what is accepted.

    ``samples`` counts frames (per channel) at ``rate`` Hz, at any rate: the length in
    seconds is what is checked.

    Raises:
        AudioError: no samples, shorter than ``MIN_CLIP_S``, or longer than ``max_s``.
    """
    if samples <= 0:
        raise AudioError(f"{name} has no audio samples: send at least {MIN_CLIP_S:g} s of speech")
    seconds = samples / rate
    if seconds < MIN_CLIP_S - _TOLERANCE_S:
        raise AudioError(
            f"{name} is {seconds * 1000:.0f} ms long: send at least {MIN_CLIP_S:g} s of speech"
        )
    if max_s is not None and seconds > max_s:
        raise AudioError(
            f"{name} is {seconds:.1f} s long but at most {max_s:g} s is accepted: "
            "segment the stream into shorter turns"
        )
    return seconds


def describe_duration(seconds: float) -> str:
    """``12.5 s``, ``45 min`` or ``3.0 h``: how long a clip is, for messages."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"
