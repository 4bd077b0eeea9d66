"""Decoding files of every supported format, rate and channel count; bad input errors."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sarsteer_guard.audio import decode_audio_bytes, load_audio, read_audio, resample
from sarsteer_guard.errors import AudioError
from sarsteer_guard.testing.speech import espeak_available, synthesize

pytestmark = [
    pytest.mark.espeak,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed"),
]

SENTENCE = "Please turn the volume down a little."


@functools.cache
def speech(rate: int) -> np.ndarray:
    return synthesize(SENTENCE, rate=rate)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_decodes_format_rate_and_channels(
    tmp_path: Path, fmt: str, rate: int, channels: int
) -> None:
    x = speech(rate)
    # Stereo with unequal channels: the mean downmix is 0.75 * x.
    data = x if channels == 1 else np.stack([x, 0.5 * x], axis=1)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, data, rate, format=fmt)

    y = load_audio(path, target_rate=16000)

    expected = resample(x, rate, 16000) * (1.0 if channels == 1 else 0.75)
    assert y.dtype == np.float32
    assert y.ndim == 1
    assert abs(y.size - expected.size) <= 16  # duration kept to 1 ms
    assert np.abs(y).max() <= 1.0
    assert corr(y, expected) > 0.98  # lossy codecs included
    assert abs(np.std(y) / np.std(expected) - 1.0) < 0.1  # level kept (downmix by mean)

    native, native_rate = read_audio(path)
    assert native_rate == rate
    assert abs(native.size - x.size) <= 1


@pytest.mark.parametrize("suffix", ["mp3", "ogg"])
def test_decodes_files_written_by_sox(tmp_path: Path, suffix: str) -> None:
    x = speech(44100)
    wav = tmp_path / "in.wav"
    sf.write(wav, np.stack([x, x], axis=1), 44100)
    out = tmp_path / f"out.{suffix}"
    subprocess.run(["sox", str(wav), str(out)], check=True, capture_output=True)

    y = load_audio(out, target_rate=16000)

    expected = resample(x, 44100, 16000)
    assert abs(y.size - expected.size) < 0.06 * 16000  # lame adds encoder delay/padding
    n = min(y.size, expected.size)
    xcorr = np.fft.irfft(np.fft.rfft(y[:n], 2 * n) * np.conj(np.fft.rfft(expected[:n], 2 * n)))
    lag = int(np.argmax(xcorr))
    lag = lag if lag < n else lag - 2 * n
    assert abs(lag) < 0.06 * 16000
    assert corr(np.roll(y[:n], -lag), expected[:n]) > 0.95


def test_decode_bytes_matches_file(tmp_path: Path) -> None:
    x = speech(22050)
    path = tmp_path / "clip.flac"
    sf.write(path, x, 22050)
    from_file = load_audio(path, target_rate=24000)
    from_bytes = decode_audio_bytes(path.read_bytes(), target_rate=24000, name="clip.flac")
    np.testing.assert_array_equal(from_file, from_bytes)
    assert abs(from_file.size - round(x.size * 24000 / 22050)) <= 1


def _assert_one_line(error: pytest.ExceptionInfo[AudioError], *needles: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError) as error:
        load_audio(tmp_path / "nope.wav", target_rate=16000)
    _assert_one_line(error, "nope.wav", "not found", "check the path")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(AudioError) as error:
        load_audio(tmp_path, target_rate=16000)
    _assert_one_line(error, "directory")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError) as error:
        load_audio(path, target_rate=16000)
    _assert_one_line(error, "empty.wav", "empty (0 bytes)")


@pytest.mark.parametrize("suffix", ["wav", "ogg", "flac"])
def test_zero_length_audio(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"zero.{suffix}"
    if suffix == "flac":  # libsndfile writes no FLAC header for zero frames; sox does
        cmd = ["sox", "-n", "-r", "16000", "-c", "1", str(path), "trim", "0", "0"]
        subprocess.run(cmd, check=True, capture_output=True)
    else:
        sf.write(path, np.zeros(0, dtype=np.float32), 16000, format=suffix.upper())
    assert path.stat().st_size > 0  # a valid header, no samples
    with pytest.raises(AudioError) as error:
        load_audio(path, target_rate=16000)
    _assert_one_line(error, f"zero.{suffix}", "no audio samples")


@pytest.mark.parametrize("suffix", ["wav", "mp3", "flac", "ogg"])
def test_text_file_renamed_as_audio(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"notes.{suffix}"
    path.write_text("these are my meeting notes, not audio\n" * 20)
    with pytest.raises(AudioError) as error:
        load_audio(path, target_rate=16000)
    _assert_one_line(error, f"notes.{suffix}", "not a readable audio file", "re-export")


def test_corrupt_body_after_valid_header(tmp_path: Path) -> None:
    good = tmp_path / "good.flac"
    sf.write(good, speech(16000), 16000)
    data = bytearray(good.read_bytes())
    rng = np.random.default_rng(0)
    data[8:] = rng.integers(0, 256, len(data) - 8, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.flac"
    bad.write_bytes(bytes(data))
    with pytest.raises(AudioError) as error:
        load_audio(bad, target_rate=16000)
    _assert_one_line(error, "bad.flac")


def test_unsupported_container(tmp_path: Path) -> None:
    # The start of an MP4/M4A file: a 'ftyp' box; libsndfile cannot read AAC.
    path = tmp_path / "voice.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00" + b"\x00" * 400)
    with pytest.raises(AudioError) as error:
        load_audio(path, target_rate=16000)
    _assert_one_line(error, "voice.m4a", "unsupported audio format", "convert it")


def test_bytes_errors() -> None:
    with pytest.raises(AudioError) as error:
        decode_audio_bytes(b"", target_rate=16000, name="upload.wav")
    _assert_one_line(error, "upload.wav", "empty")
    with pytest.raises(AudioError) as error:
        decode_audio_bytes(b"RIFF nonsense" * 10, target_rate=16000)
    _assert_one_line(error, "<audio bytes>", "not a readable audio file")


@pytest.mark.parametrize("rate", [0, 16, -16000, 16000.0, True])
def test_bad_target_rate(tmp_path: Path, rate: object) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, speech(16000), 16000)
    with pytest.raises(AudioError) as error:
        load_audio(path, target_rate=rate)  # type: ignore[arg-type]  # wrong on purpose
    _assert_one_line(error, "target_rate")
