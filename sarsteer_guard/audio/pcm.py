"""Raw PCM validation, conversion and resampling.

Voice frameworks hand us raw PCM (bytes or arrays) at whatever rate the transport
uses (8 kHz telephony, 24 kHz LiveKit rooms, 48 kHz WebRTC). Everything downstream
wants float32 mono at one rate, so this module is the single place where PCM is
checked and converted; a malformed buffer fails here with one actionable line rather
than as a shape error deep inside a model.

Sample rates: any integer rate from ``MIN_RATE`` to ``MAX_RATE`` Hz is accepted.
soxr resamples between arbitrary rates, so a fixed list would only reject valid
streams (11.025 kHz files, 96 kHz studio captures); the bounds catch unit mistakes
such as passing kHz (``16``) or a byte count.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import soxr

from sarsteer_guard.errors import AudioError

#: Lowest accepted sample rate (Hz); below this speech is unintelligible anyway.
MIN_RATE = 4000
#: Highest accepted sample rate (Hz).
MAX_RATE = 384_000
#: Rates voice transports commonly use; any rate in [MIN_RATE, MAX_RATE] is accepted.
COMMON_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)

PcmDtype = Literal["int16", "float32"]
FloatArray = npt.NDArray[np.float32]

_BYTES_PER_SAMPLE: dict[str, int] = {"int16": 2, "float32": 4}
_NUMPY_DTYPE: dict[str, str] = {"int16": "<i2", "float32": "<f4"}


def check_rate(rate: object, what: str = "sample_rate") -> int:
    """Return ``rate`` as an int, or raise AudioError if it is not a usable sample rate."""
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer):
        raise AudioError(f"{what} must be an integer number of Hz, got {rate!r}; pass e.g. 16000")
    value = int(rate)
    if not MIN_RATE <= value <= MAX_RATE:
        raise AudioError(
            f"{what} {value} Hz is outside {MIN_RATE}-{MAX_RATE} Hz; pass the rate in Hz "
            f"(e.g. 16000, not 16)"
        )
    return value


def _check_channels(channels: object) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int | np.integer):
        raise AudioError(f"channels must be 1 or 2, got {channels!r}; pass channels=1 for mono")
    if int(channels) not in (1, 2):
        raise AudioError(f"channels must be 1 (mono) or 2 (stereo), got {channels}; downmix first")
    return int(channels)


def to_mono_float(
    data: bytes | bytearray | memoryview | npt.NDArray[np.generic],
    *,
    channels: int = 1,
    dtype: PcmDtype = "int16",
) -> FloatArray:
    """Validate PCM and return float32 mono in [-1, 1] at the same rate.

    Bytes are little-endian interleaved samples of ``dtype``. Arrays carry their own
    dtype (int16 is scaled by 1/32768, floats are taken as is) and are either 1-D
    interleaved with ``channels`` channels or 2-D ``[frames, channels]``. Stereo is
    downmixed by the mean. Float samples must be finite; they are clipped to [-1, 1]
    because decoders and mixers legitimately overshoot by a little.
    """
    if dtype not in _BYTES_PER_SAMPLE:
        raise AudioError(f"dtype must be 'int16' or 'float32', got {dtype!r}; pick one of those")
    channels = _check_channels(channels)
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        frame_bytes = _BYTES_PER_SAMPLE[dtype] * channels
        if len(raw) % frame_bytes:
            raise AudioError(
                f"PCM buffer of {len(raw)} bytes is not a whole number of {frame_bytes}-byte "
                f"frames ({dtype}, {channels} channel(s)); check dtype/channels or re-chunk"
            )
        array: npt.NDArray[np.generic] = np.frombuffer(raw, dtype=_NUMPY_DTYPE[dtype])
    elif isinstance(data, np.ndarray):
        array = data
    else:
        raise AudioError(
            f"PCM data must be bytes or a numpy array, got {type(data).__name__}; convert it first"
        )

    if array.ndim == 2:
        if array.shape[1] not in (1, 2):
            hint = " (transpose it)" if array.shape[0] in (1, 2) else ""
            raise AudioError(
                f"PCM array of shape {array.shape} is not [frames, 1 or 2 channels]{hint}; "
                f"pass [frames, channels]"
            )
        frames = array
    elif array.ndim == 1:
        if array.size % channels:
            raise AudioError(
                f"interleaved PCM of {array.size} samples is not a multiple of {channels} "
                f"channels; pass whole frames"
            )
        frames = array.reshape(-1, channels)
    else:
        raise AudioError(f"PCM array must be 1-D or 2-D, got shape {array.shape}; flatten it")

    if frames.dtype == np.int16:
        out = frames.astype(np.float32) * np.float32(1.0 / 32768.0)
    elif np.issubdtype(frames.dtype, np.floating):
        out = frames.astype(np.float32, copy=False)
        if not np.isfinite(out).all():
            raise AudioError("PCM contains NaN or infinite samples; fix the audio source")
        out = np.clip(out, -1.0, 1.0)
    else:
        raise AudioError(
            f"PCM array dtype {frames.dtype} is not supported; pass int16 or float32 samples"
        )
    mono = out[:, 0] if out.shape[1] == 1 else out.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(x: npt.NDArray[np.generic], src_rate: int, dst_rate: int) -> FloatArray:
    """Resample float audio with soxr (HQ), keeping duration; returns float32.

    soxr is the well-kept, fast, band-limited choice; its HQ setting is transparent for
    speech and costs well under 1 ms per second of audio. 1-D or ``[frames, channels]``.
    """
    src = check_rate(src_rate, "src_rate")
    dst = check_rate(dst_rate, "dst_rate")
    arr = np.asarray(x, dtype=np.float32)
    if src == dst or arr.shape[0] == 0:
        return np.ascontiguousarray(arr, dtype=np.float32)
    out: FloatArray = soxr.resample(arr, src, dst, quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)


def pcm_to_float(
    data: bytes | bytearray | memoryview | npt.NDArray[np.generic],
    *,
    sample_rate: int,
    channels: int = 1,
    target_rate: int,
    dtype: PcmDtype = "int16",
) -> FloatArray:
    """Validate raw PCM and return float32 mono in [-1, 1] at ``target_rate``.

    See :func:`to_mono_float` for the accepted layouts; raises AudioError (one line)
    on a bad rate, channel count, partial frame or non-finite sample.
    """
    src = check_rate(sample_rate)
    dst = check_rate(target_rate, "target_rate")
    return resample(to_mono_float(data, channels=channels, dtype=dtype), src, dst)


def float_to_pcm16(x: npt.NDArray[np.generic]) -> bytes:
    """Encode float audio in [-1, 1] as little-endian int16 PCM bytes (clipped, rounded).

    Transports and webrtcvad take 16-bit PCM; clipping first avoids wrap-around clicks.
    """
    arr = np.asarray(x, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise AudioError("audio contains NaN or infinite samples; fix the audio source")
    scaled = np.clip(np.rint(arr * 32768.0), -32768, 32767).astype("<i2")
    out: bytes = scaled.tobytes()
    return out
