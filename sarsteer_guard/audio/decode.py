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
import stat
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

from sarsteer_guard.audio.limits import MAX_CLIP_S, describe_duration
from sarsteer_guard.audio.pcm import FloatArray, check_rate, resample
from sarsteer_guard.errors import AudioError, one_line

#: Formats this module reads; named in error messages so the user knows what to convert to.
SUPPORTED_FORMATS = ("WAV", "FLAC", "OGG", "MP3")

#: Most bytes read from a stream (``respond --audio -``): 30 s of 8-channel 48 kHz
#: float32 WAV is 44 MiB.
MAX_STREAM_BYTES = 64 << 20
#: Frames decoded per step; a block of 8-channel float32 is 2 MiB.
_BLOCK_FRAMES = 1 << 16
#: libsndfile reports an unknown length as SF_COUNT_MAX; never trust that as a duration.
_UNKNOWN_FRAMES = 1 << 62

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


def _decode(
    source: Any, name: str, head: bytes, suffix: str, max_seconds: float | None
) -> tuple[FloatArray, int]:
    """Decode an opened source to float32 mono at its own rate, mapping every failure.

    Invariant: at most ``max_seconds`` (+ one block) of audio is ever decoded, whatever
    the file claims, so a small file of hours of silence costs no more than the cap.
    """
    try:
        with sf.SoundFile(source) as sound:
            rate = int(sound.samplerate)
            _check_header(name, rate, int(sound.frames), max_seconds)
            mono = _read_mono(sound, name, rate, max_seconds)
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
    if mono.shape[0] == 0:
        raise AudioError(f"{name}: contains no audio samples (zero length); re-record or re-export")
    if not np.isfinite(mono).all():
        raise AudioError(f"{name}: contains NaN or infinite samples; re-export it")
    return np.ascontiguousarray(np.clip(mono, -1.0, 1.0), dtype=np.float32), rate


def _too_long(name: str, what: str, max_seconds: float) -> AudioError:
    return AudioError(
        f"{name}: {what} but at most {max_seconds:g} s is accepted; cut it into shorter "
        f"clips (e.g. `sox IN OUT trim 0 {max_seconds:g}`)"
    )


def _check_header(name: str, rate: int, frames: int, max_seconds: float | None) -> None:
    """Refuse by the header alone, before decoding anything (the decompression-bomb check)."""
    if rate <= 0:
        raise AudioError(f"{name}: the header gives no sample rate; re-export the file")
    if max_seconds is not None and 0 < frames < _UNKNOWN_FRAMES and frames / rate > max_seconds:
        what = f"is {describe_duration(frames / rate)} long (by its header)"
        raise _too_long(name, what, max_seconds)


def _read_mono(sound: sf.SoundFile, name: str, rate: int, max_seconds: float | None) -> FloatArray:
    """Decode block by block, downmixing as it goes, stopping past ``max_seconds``.

    Headers can lie (or say nothing, as a streamed FLAC does), so the cap is enforced on
    what is actually decoded too; memory stays one mono copy plus one block.
    """
    limit = None if max_seconds is None else int(max_seconds * rate) + 1
    blocks: list[FloatArray] = []
    total = 0
    while True:
        block = sound.read(frames=_BLOCK_FRAMES, dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            break
        mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
        blocks.append(np.ascontiguousarray(mono, dtype=np.float32))
        total += mono.shape[0]
        if limit is not None and max_seconds is not None and total > limit:
            what = f"runs past {max_seconds:g} s (decoding stopped at {total / rate:.1f} s)"
            raise _too_long(name, what, max_seconds)
    if not blocks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(blocks)


def header_seconds(path: str | os.PathLike[str]) -> float | None:
    """The duration a file's header claims, without decoding; None if unknown or unreadable.

    Cheap enough to run over every clip of a manifest when it is loaded, so a clip far
    beyond the cap is named with its manifest line before any model is loaded.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        info = sf.info(os.fspath(path))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError, OSError):
        return None
    if info.samplerate <= 0 or not 0 < info.frames < _UNKNOWN_FRAMES:
        return None
    return float(info.frames / info.samplerate)


def read_audio(
    path: str | os.PathLike[str], *, max_seconds: float | None = None
) -> tuple[FloatArray, int]:
    """Read a file as float32 mono at the file's own sample rate; returns ``(audio, rate)``.

    Used where the native rate matters (the ``segment`` command reports it). Pass
    ``max_seconds`` wherever the clip goes to a model: a longer file is refused from its
    header, before decoding, and decoding never runs past the cap whatever the header
    says. Only regular files are read: a FIFO or device would block or never end.

    Raises:
        AudioError: missing, not a regular file, empty, too long, corrupt or unsupported.
    """
    p = Path(path)
    name = one_line(p)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise AudioError(
            f"{name}: audio file not found; check the path (cwd is {Path.cwd()})"
        ) from None
    except OSError as error:
        raise AudioError(
            f"{name}: cannot read ({one_line(error.strerror or error)}); check permissions"
        ) from error
    if stat.S_ISDIR(mode):
        raise AudioError(f"{name}: is a directory, not an audio file; pass a file path")
    if not stat.S_ISREG(mode):
        raise AudioError(
            f"{name}: is not a regular file (a pipe, device or socket, which may never end); "
            "save the audio to a file first, or pass - to read it from standard input"
        )
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
    return _decode(str(p), name, head, p.suffix, max_seconds)


def read_audio_stream(
    stream: BinaryIO,
    *,
    name: str = "<stdin>",
    max_bytes: int = MAX_STREAM_BYTES,
    max_seconds: float | None = MAX_CLIP_S,
) -> tuple[FloatArray, int]:
    """Read a whole audio file from a byte stream (``-`` for standard input) at its own rate.

    At most ``max_bytes`` are read: a longer stream is refused rather than buffered.

    Raises:
        AudioError: empty, too large, too long, corrupt or unsupported.
    """
    label = one_line(name)
    raw = stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise AudioError(
            f"{label}: more than {max_bytes:,} bytes of audio data; send a shorter "
            "clip (or save it to a file and cut it)"
        )
    if not raw:
        raise AudioError(f"{label}: audio data is empty (0 bytes); send a whole audio file")
    return _decode(io.BytesIO(raw), label, raw[:64], Path(name).suffix, max_seconds)


def load_audio(
    path: str | os.PathLike[str], *, target_rate: int, max_seconds: float | None = MAX_CLIP_S
) -> FloatArray:
    """Load an audio file as float32 mono in [-1, 1] at ``target_rate``.

    Files longer than ``max_seconds`` (30 s, what the model hears) are refused from the
    header before decoding; pass None to read a long recording in full.

    Raises:
        AudioError: missing, empty, too long, zero-length, corrupt or unsupported file.
    """
    rate = check_rate(target_rate, "target_rate")
    audio, native = read_audio(path, max_seconds=max_seconds)
    return resample(audio, native, rate)


def decode_audio_bytes(
    data: bytes | bytearray | memoryview,
    *,
    target_rate: int,
    name: str = "<audio bytes>",
    max_seconds: float | None = MAX_CLIP_S,
) -> FloatArray:
    """Decode an in-memory audio file (e.g. an upload) like :func:`load_audio`.

    ``name`` labels error messages (pass the upload's file name if there is one). A
    small upload can claim hours of audio: it is refused from its header, and decoding
    stops at ``max_seconds`` whatever the header says.
    """
    rate = check_rate(target_rate, "target_rate")
    raw = bytes(data)
    label = one_line(name)
    if not raw:
        raise AudioError(f"{label}: audio data is empty (0 bytes); send a whole audio file")
    audio, native = _decode(io.BytesIO(raw), label, raw[:64], Path(name).suffix, max_seconds)
    return resample(audio, native, rate)
