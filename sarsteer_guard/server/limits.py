"""Audio memory limits: turn audio held at the model's size, and byte budgets that bound it.

A client declares its audio format, so a budget derived from that format is the client's
to choose (384 kHz stereo float32 is 92 MB per 30 s turn). Here audio is held at most at
the size the model will use it, 16 kHz mono float32 (64,000 bytes per second): a turn in
a larger format is downmixed and resampled as it arrives (:class:`TurnAudio`), one in a
smaller format (16 kHz mono int16, 8 kHz telephony) is kept as sent. What a turn holds is
then charged to three :class:`ByteBudget` s, the turn's own (``max_turn_s`` of audio),
its connection's and the server's, and given back when the turn ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import soxr

from sarsteer_guard.audio.pcm import to_mono_float
from sarsteer_guard.errors import AudioError
from sarsteer_guard.server.protocol import BYTES_PER_SAMPLE, SampleFormat

#: The rate every supported audio-language model listens at.
MODEL_RATE = 16_000
#: Bytes per second of audio at the model's rate, mono float32.
MODEL_BYTES_PER_S = MODEL_RATE * 4
MIB = 1 << 20


@dataclass
class ByteBudget:
    """A byte allowance shared by its holders; ``used`` never exceeds ``limit``."""

    limit: int
    used: int = 0

    def fits(self, size: int) -> bool:
        """True if ``size`` more bytes stay within the limit."""
        return self.used + size <= self.limit

    def take(self, size: int) -> None:
        """Charge ``size`` bytes (check :meth:`fits` first)."""
        self.used += size

    def give(self, size: int) -> None:
        """Return ``size`` bytes taken earlier."""
        self.used = max(0, self.used - size)


@dataclass
class TurnAudio:
    """One turn's audio as it arrives, held at most at the model's 16 kHz mono float32 size.

    Invariant: ``size`` is the number of bytes held in ``chunks``. A format no larger
    than the model's (``passthrough``) is kept byte for byte; the guard converts it later.
    """

    sample_rate: int
    channels: int
    sample_format: SampleFormat
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    _rest: bytes = b""
    _stream: soxr.ResampleStream | None = None

    def __post_init__(self) -> None:
        if not self.passthrough and self.sample_rate != MODEL_RATE:
            self._stream = soxr.ResampleStream(
                self.sample_rate, MODEL_RATE, 1, dtype="float32", quality="HQ"
            )

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (all channels) as the client sends it."""
        return BYTES_PER_SAMPLE[self.sample_format] * self.channels

    @property
    def passthrough(self) -> bool:
        """True when the client's format takes no more bytes per second than the model's."""
        return self.sample_rate * self.frame_bytes <= MODEL_BYTES_PER_S

    @property
    def bytes_per_s(self) -> int:
        """Bytes held per second of audio."""
        return self.sample_rate * self.frame_bytes if self.passthrough else MODEL_BYTES_PER_S

    def convert(self, pcm: bytes) -> bytes:
        """``pcm`` as it will be held (converted unless passthrough); not yet added.

        Raises :class:`AudioError` for samples that cannot be audio (NaN, infinity).
        """
        if self.passthrough:
            return pcm
        data = self._rest + pcm
        whole = len(data) - len(data) % self.frame_bytes
        self._rest = data[whole:]
        mono = to_mono_float(data[:whole], channels=self.channels, dtype=self.sample_format)
        if self._stream is not None:
            mono = self._stream.resample_chunk(mono)
        return np.ascontiguousarray(mono, dtype="<f4").tobytes()

    def add(self, held: bytes) -> None:
        """Keep bytes returned by :meth:`convert`."""
        self.chunks.append(held)
        self.size += len(held)

    def finish(self) -> tuple[bytes, int, int, SampleFormat]:
        """(audio, sample_rate, channels, format) of the whole turn, for the guard."""
        if self.passthrough:
            return b"".join(self.chunks), self.sample_rate, self.channels, self.sample_format
        if self._rest:
            raise AudioError(
                f"the turn's audio ends in a partial {self.frame_bytes}-byte frame: send whole "
                f"frames ({self.sample_format}, {self.channels} channel(s))"
            )
        if self._stream is not None:
            tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            self.add(np.ascontiguousarray(tail, dtype="<f4").tobytes())
        return b"".join(self.chunks), MODEL_RATE, 1, "float32"
