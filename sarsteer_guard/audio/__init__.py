"""Audio front end: decoding files, PCM validation, resampling and turn segmentation.

No torch here: the front end runs in voice-pipeline processes that may never load a
model. Everything returns float32 mono in [-1, 1] and raises
:class:`~sarsteer_guard.errors.AudioError` with one actionable line.
"""

from sarsteer_guard.audio.decode import (
    MAX_STREAM_BYTES,
    SUPPORTED_FORMATS,
    decode_audio_bytes,
    header_seconds,
    load_audio,
    read_audio,
    read_audio_stream,
)
from sarsteer_guard.audio.limits import MAX_CLIP_S, MIN_CLIP_S, check_clip_length
from sarsteer_guard.audio.pcm import (
    COMMON_RATES,
    MAX_RATE,
    MIN_RATE,
    check_rate,
    float_to_pcm16,
    pcm_to_float,
    resample,
    to_mono_float,
)
from sarsteer_guard.audio.vad import (
    VAD_RATE,
    SegmenterSettings,
    SpeechTurn,
    TurnSegmenter,
    segment_audio,
)

__all__ = [
    "COMMON_RATES",
    "MAX_CLIP_S",
    "MAX_RATE",
    "MAX_STREAM_BYTES",
    "MIN_CLIP_S",
    "MIN_RATE",
    "SUPPORTED_FORMATS",
    "VAD_RATE",
    "SegmenterSettings",
    "SpeechTurn",
    "TurnSegmenter",
    "check_clip_length",
    "check_rate",
    "decode_audio_bytes",
    "float_to_pcm16",
    "header_seconds",
    "load_audio",
    "pcm_to_float",
    "read_audio",
    "read_audio_stream",
    "resample",
    "segment_audio",
    "to_mono_float",
]
