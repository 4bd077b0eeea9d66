"""Decoding audio files (WAV, FLAC, OGG/Vorbis/Opus, MP3) to float32 mono.

libsndfile (through soundfile) reads all four formats itself (MP3 since libsndfile
1.1), so there is no ffmpeg dependency and no subprocess per file. Any sample rate and
channel count is accepted: channels are downmixed by the mean and the result is
resampled with soxr. Every failure becomes one :class:`AudioError` line naming the
file and what to do, because calibration runs over hundreds of files and a traceback
does not say which one is broken.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from sarsteer_guard.audio.pcm import FloatArray, check_rate, resample
from sarsteer_guard.errors import AudioError, one_line

#: Formats this module reads; named in error messages so the user knows what to convert to.
SUPPORTED_FORMATS = ("WAV", "FLAC", "OGG", "MP3")

_CONVERT_HINT = "convert it to WAV, FLAC, OGG or MP3 (e.g. `ffmpeg -i IN OUT.flac`)"

# Containers that are audio but that libsndfile cannot read, by magic bytes.
_UNSUPPORTED_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MP4/M4A (AAC)"),
    (0, b"\x1a\x45\xdf\xa3", "WebM/Matroska"),
    (0, b"#!AMR", "AMR"),
    (0, b"\x30\x26\xb2\x75", "WMA/ASF"),
    (0, b".RMF", "RealAudio"),
)
_UNSUPPORTED_SUFFIX = {
    ".m4a": "MP4/M4A (AAC)",
    ".mp4": "MP4/M4A (AAC)",
    ".aac": "AAC",
    ".webm": "WebM/Matroska",
    ".mka": "WebM/Matroska",
    ".wma": "WMA/ASF",
    ".amr": "AMR",
}


def _unsupported_kind(head: bytes, suffix: str) -> str | None:
    """Name a known-but-unreadable audio container, or None if it is just not audio."""
    for offset, magic, name in _UNSUPPORTED_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    # ADTS AAC frame sync: 12 one-bits then layer bits 00 (MP3 frames have layer != 00).
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "AAC (ADTS)"
    return _UNSUPPORTED_SUFFIX.get(suffix.lower())


def _flac_without_samples(head: bytes) -> bool:
    """True for a FLAC header whose STREAMINFO says 0 samples (libsndfile cannot open it)."""
    if len(head) < 26 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return False
    # STREAMINFO starts at byte 8; total samples are its bits 108-143.
    return ((head[21] & 0x0F) << 32 | int.from_bytes(head[22:26], "big")) == 0


def _decode(source: Any, name: str, head: bytes, suffix: str) -> tuple[FloatArray, int]:
    """Decode an opened source to float32 mono at its own rate, mapping every failure."""
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as error:
        if _flac_without_samples(head):
            raise AudioError(
                f"{name}: contains no audio samples (zero-length FLAC); re-record or re-export"
            ) from error
        kind = _unsupported_kind(head, suffix)
        if kind is not None:
            raise AudioError(f"{name}: unsupported audio format {kind}; {_CONVERT_HINT}") from error
        raise AudioError(
            f"{name}: not a readable audio file (corrupt, truncated or not audio: "
            f"{one_line(error)}); re-export it as WAV, FLAC, OGG or MP3"
        ) from error
    if data.shape[0] == 0:
        raise AudioError(f"{name}: contains no audio samples (zero length); re-record or re-export")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: contains NaN or infinite samples; re-export it")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    mono = np.clip(mono, -1.0, 1.0)
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def read_audio(path: str | os.PathLike[str]) -> tuple[FloatArray, int]:
    """Read a file as float32 mono at the file's own sample rate; returns ``(audio, rate)``.

    Used where the native rate matters (the ``segment`` command reports it).
    """
    p = Path(path)
    name = one_line(p)
    if not p.exists():
        raise AudioError(f"{name}: audio file not found; check the path (cwd is {Path.cwd()})")
    if p.is_dir():
        raise AudioError(f"{name}: is a directory, not an audio file; pass a file path")
    try:
        size = p.stat().st_size
        with p.open("rb") as handle:
            head = handle.read(64)
    except OSError as error:
        raise AudioError(
            f"{name}: cannot read ({one_line(error.strerror or error)}); check permissions"
        ) from error
    if size == 0:
        raise AudioError(f"{name}: file is empty (0 bytes); re-record or re-export it")
    return _decode(str(p), name, head, p.suffix)


def load_audio(path: str | os.PathLike[str], *, target_rate: int) -> FloatArray:
    """Load an audio file as float32 mono in [-1, 1] at ``target_rate``.

    Raises:
        AudioError: missing, empty, zero-length, corrupt or unsupported file (one line).
    """
    rate = check_rate(target_rate, "target_rate")
    audio, native = read_audio(path)
    return resample(audio, native, rate)


def decode_audio_bytes(
    data: bytes | bytearray | memoryview, *, target_rate: int, name: str = "<audio bytes>"
) -> FloatArray:
    """Decode an in-memory audio file (e.g. an upload) like :func:`load_audio`.

    ``name`` labels error messages (pass the upload's file name if there is one).
    """
    rate = check_rate(target_rate, "target_rate")
    raw = bytes(data)
    label = one_line(name)
    if not raw:
        raise AudioError(f"{label}: audio data is empty (0 bytes); send a whole audio file")
    audio, native = _decode(io.BytesIO(raw), label, raw[:64], Path(name).suffix)
    return resample(audio, native, rate)
