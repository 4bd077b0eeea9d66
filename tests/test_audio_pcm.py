"""PCM validation and conversion, and soxr resampling on real speech."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from sarsteer_guard.audio import float_to_pcm16, pcm_to_float, resample, to_mono_float
from sarsteer_guard.errors import AudioError
from sarsteer_guard.testing.speech import espeak_available, synthesize

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")


@functools.cache
def speech(rate: int) -> np.ndarray:
    return synthesize("What's the weather going to be like this weekend?", rate=rate)


def band_energies(x: np.ndarray, rate: int, edges: list[int]) -> np.ndarray:
    """Share of energy per frequency band (averaged 32 ms frames)."""
    n = int(0.032 * rate)
    frames = x[: x.size // n * n].reshape(-1, n) * np.hanning(n)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    bands = np.array(
        [power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in itertools.pairwise(edges)]
    )
    shares: np.ndarray = bands / bands.sum()
    return shares


def test_int16_bytes_mono() -> None:
    samples = np.array([0, 16384, -16384, 32767, -32768], dtype="<i2")
    out = pcm_to_float(samples.tobytes(), sample_rate=16000, channels=1, target_rate=16000)
    np.testing.assert_allclose(out, [0.0, 0.5, -0.5, 32767 / 32768, -1.0])
    assert out.dtype == np.float32


def test_stereo_bytes_downmixed_by_mean() -> None:
    interleaved = np.array([16384, 0, -16384, -16384], dtype="<i2").tobytes()
    out = pcm_to_float(interleaved, sample_rate=16000, channels=2, target_rate=16000)
    np.testing.assert_allclose(out, [0.25, -0.5])


def test_float32_bytes_and_arrays() -> None:
    x = np.array([0.1, -0.2, 1.5, -3.0], dtype="<f4")
    out = pcm_to_float(
        x.tobytes(), sample_rate=48000, channels=1, target_rate=48000, dtype="float32"
    )
    np.testing.assert_allclose(out, [0.1, -0.2, 1.0, -1.0], rtol=1e-6)  # clipped
    two_d = np.stack([x, x], axis=1).astype(np.float64)
    np.testing.assert_allclose(to_mono_float(two_d), out, rtol=1e-6)


def test_pcm16_round_trip_is_exact() -> None:
    samples = np.arange(-32768, 32768, 7, dtype=np.int16)
    back = float_to_pcm16(to_mono_float(samples))
    np.testing.assert_array_equal(np.frombuffer(back, dtype="<i2"), samples)
    assert np.frombuffer(float_to_pcm16(np.array([2.0, -2.0])), "<i2").tolist() == [32767, -32768]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"data": b"\x00\x01\x02", "channels": 1}, "not a whole number of 2-byte frames"),
        ({"data": b"\x00" * 6, "channels": 2}, "4-byte frames"),
        ({"data": b"\x00" * 8, "channels": 3}, "channels must be 1 (mono) or 2"),
        ({"data": b"\x00" * 4, "sample_rate": 16}, "outside 4000-384000 Hz"),
        ({"data": b"\x00" * 4, "sample_rate": 0}, "outside"),
        ({"data": b"\x00" * 4, "sample_rate": 16000.0}, "integer number of Hz"),
        ({"data": b"\x00" * 4, "target_rate": 1_000_000}, "target_rate"),
        ({"data": b"\x00" * 4, "dtype": "int24"}, "dtype must be"),
        ({"data": np.array([0.0, np.nan], np.float32)}, "NaN or infinite"),
        ({"data": np.array([0.0, np.inf])}, "NaN or infinite"),
        ({"data": np.zeros((2, 400), np.float32)}, "transpose"),
        ({"data": np.zeros((2, 2, 2), np.float32)}, "1-D or 2-D"),
        ({"data": np.zeros(4, np.int32)}, "int16 or float32"),
        ({"data": [0.0, 0.1]}, "bytes or a numpy array"),
    ],
)
def test_pcm_validation(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"sample_rate": 16000, "channels": 1, "target_rate": 16000}
    args.update(kwargs)
    with pytest.raises(AudioError) as error:
        pcm_to_float(**args)  # type: ignore[arg-type]  # invalid values on purpose
    assert needle in str(error.value)
    assert "\n" not in str(error.value)


def test_any_rate_in_range_accepted() -> None:
    out = pcm_to_float(np.zeros(11025, np.int16).tobytes(), sample_rate=11025, target_rate=16000)
    assert out.size == 16000


@needs_espeak
@pytest.mark.parametrize(("src", "dst"), [(16000, 48000), (48000, 16000), (22050, 16000)])
def test_resample_keeps_duration_and_spectrum(src: int, dst: int) -> None:
    x = speech(src)
    y = resample(x, src, dst)
    assert y.dtype == np.float32
    assert abs(y.size / dst - x.size / src) < 1e-3
    edges = [100, 300, 600, 1000, 1500, 2000, 3000, 4000, 5500, 7500]  # below every Nyquist
    a, b = band_energies(x, src, edges), band_energies(y, dst, edges)
    assert np.abs(a - b).max() < 0.02
    # Round trip back to the source rate is nearly the original (band-limited by min rate).
    back = resample(y, dst, src)
    if dst > src:
        assert np.corrcoef(back[: x.size], x[: back.size])[0, 1] > 0.999


@needs_espeak
def test_resample_stereo_and_identity() -> None:
    x = speech(16000)
    stereo = np.stack([x, -x], axis=1)
    out = resample(stereo, 16000, 8000)
    assert out.shape == (x.size // 2, 2)
    np.testing.assert_allclose(out[:, 0], -out[:, 1], atol=1e-6)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)
