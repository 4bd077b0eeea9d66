"""Turn segmentation over webrtcvad, streaming or offline.

Voice transports deliver audio in chunks of whatever size and rate they like (LiveKit:
24 kHz in 50 ms frames), while webrtcvad only accepts 16-bit mono at 8/16/32/48 kHz in
frames of exactly 10, 20 or 30 ms. :class:`TurnSegmenter` hides that: it downmixes,
resamples every input to 16 kHz with a *streaming* soxr resampler (so chunk borders
leave no seams), re-chunks to exact frames and runs a small state machine:

- idle: keep ``padding_ms`` of recent audio as pre-roll; the first voiced frame opens
  a turn (webrtcvad often misses a soft onset, so the pre-roll recovers it);
- in a turn: every voiced frame extends it; ``end_silence_ms`` of unvoiced frames ends
  it; a turn with less than ``min_speech_ms`` of voiced frames is dropped as a click
  or cough; a turn reaching ``max_turn_s`` is cut and a new one starts.

A :class:`SpeechTurn`'s ``start_s``/``end_s`` are stream times of its audio: from
``padding_ms`` before the first voiced frame (clamped to the stream start and to the
previous turn) to the end of the last voiced frame, so
``len(audio) == round((end_s - start_s) * 16000)``. No trailing padding is added:
webrtcvad already holds "voiced" for about 100 ms after speech stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr
import webrtcvad

from sarsteer_guard.audio.pcm import FloatArray, check_rate, to_mono_float
from sarsteer_guard.errors import AudioError

#: Rate of the audio webrtcvad sees and of every SpeechTurn's audio.
VAD_RATE = 16000


@dataclass(frozen=True, eq=False)  # eq on ndarray fields would raise; compare times instead
class SpeechTurn:
    """One detected user turn: stream times in seconds and its 16 kHz float32 mono audio."""

    start_s: float
    end_s: float
    audio: FloatArray = field(repr=False)
    sample_rate: int = VAD_RATE

    @property
    def duration_s(self) -> float:
        """Length of the turn's audio in seconds."""
        return self.end_s - self.start_s


@dataclass(frozen=True)
class SegmenterSettings:
    """Validated segmenter settings; defaults suit conversational turns.

    The one way adapters configure webrtcvad turn taking (the Pipecat service's
    ``SARSteerParams.segmenter``, the LiveKit model's ``turn_detection``).

    Attributes:
        aggressiveness: webrtcvad mode 0-3; higher rejects more non-speech.
        frame_ms: VAD frame length, 10, 20 or 30 ms.
        padding_ms: the pre-roll: audio kept before the first voiced frame (webrtcvad often
            misses a soft onset; this recovers it).
        min_speech_ms: turns with fewer voiced milliseconds are dropped (clicks, coughs).
        end_silence_ms: unvoiced time that ends a turn; longer tolerates mid-sentence pauses.
        max_turn_s: a turn is cut at this length so one monologue cannot grow unbounded.
    """

    aggressiveness: int = 2
    frame_ms: int = 30
    padding_ms: int = 150
    min_speech_ms: int = 250
    end_silence_ms: int = 600
    max_turn_s: float = 30.0

    def __post_init__(self) -> None:
        def integer(name: str, value: object) -> int:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise AudioError(f"segmenter {name} must be an integer, got {value!r}")
            return int(value)

        if integer("aggressiveness", self.aggressiveness) not in (0, 1, 2, 3):
            raise AudioError(
                f"segmenter aggressiveness must be 0-3, got {self.aggressiveness}; "
                f"use 2 (3 rejects most noise)"
            )
        if integer("frame_ms", self.frame_ms) not in (10, 20, 30):
            raise AudioError(f"segmenter frame_ms must be 10, 20 or 30, got {self.frame_ms}")
        for name in ("padding_ms", "min_speech_ms"):
            if integer(name, getattr(self, name)) < 0:
                raise AudioError(f"segmenter {name} must be >= 0, got {getattr(self, name)}")
        if integer("end_silence_ms", self.end_silence_ms) < self.frame_ms:
            raise AudioError(
                f"segmenter end_silence_ms must be >= frame_ms ({self.frame_ms}), "
                f"got {self.end_silence_ms}; 300-1000 ms suits conversation"
            )
        if (
            isinstance(self.max_turn_s, bool)
            or not isinstance(self.max_turn_s, int | float)
            or not self.max_turn_s * 1000 >= self.padding_ms + 2 * self.frame_ms
        ):
            least = (self.padding_ms + 2 * self.frame_ms) / 1000
            raise AudioError(
                f"segmenter max_turn_s must be a number >= {least} s (padding plus two "
                f"frames), got {self.max_turn_s!r}"
            )

    def new_segmenter(self) -> TurnSegmenter:
        """A fresh streaming segmenter with these settings (one per audio stream)."""
        return TurnSegmenter(
            aggressiveness=self.aggressiveness,
            frame_ms=self.frame_ms,
            padding_ms=self.padding_ms,
            min_speech_ms=self.min_speech_ms,
            end_silence_ms=self.end_silence_ms,
            max_turn_s=self.max_turn_s,
        )


class TurnSegmenter:
    """Streaming webrtcvad turn segmenter; feed :meth:`push`, end with :meth:`flush`.

    Accepts float or int16 PCM at any supported rate, mono or stereo, in chunks of any
    size; a change of rate between pushes is handled (the old resampler is drained).
    Not thread-safe: use one per stream.

    Example:
        >>> seg = TurnSegmenter(end_silence_ms=500)
        >>> turns = [t for chunk in chunks for t in seg.push(chunk, 24000)]  # doctest: +SKIP
        >>> turns += seg.flush()  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        aggressiveness: int = 2,
        frame_ms: int = 30,
        padding_ms: int = 150,
        min_speech_ms: int = 250,
        end_silence_ms: int = 600,
        max_turn_s: float = 30.0,
    ) -> None:
        self.settings = SegmenterSettings(
            aggressiveness=aggressiveness,
            frame_ms=frame_ms,
            padding_ms=padding_ms,
            min_speech_ms=min_speech_ms,
            end_silence_ms=end_silence_ms,
            max_turn_s=max_turn_s,
        )
        s = self.settings
        self._vad = webrtcvad.Vad(s.aggressiveness)
        self._frame = s.frame_ms * VAD_RATE // 1000
        self._padding = s.padding_ms * VAD_RATE // 1000
        self._min_voiced = s.min_speech_ms * VAD_RATE // 1000
        self._end_silence = s.end_silence_ms * VAD_RATE // 1000
        self._max_turn = int(s.max_turn_s * VAD_RATE)
        self.reset()

    def reset(self) -> None:
        """Forget all state; the next push starts a new stream at time 0."""
        self._resampler: Any = None  # soxr.ResampleStream (untyped); None until first push
        self._in_rate = 0
        self._pending = np.zeros(0, dtype=np.float32)  # 16 kHz samples not yet a whole frame
        self._buf: list[FloatArray] = []  # 16 kHz audio from _buf_start to _pos
        self._buf_start = 0
        self._pos = 0  # 16 kHz samples consumed by the VAD so far
        self._floor = 0  # a new turn's audio never starts before this (previous turn's end)
        self._in_turn = False
        self._speech_start = 0
        self._last_voiced_end = 0
        self._voiced = 0

    @property
    def in_speech(self) -> bool:
        """True while a turn is open (useful for barge-in decisions)."""
        return self._in_turn

    @property
    def position_s(self) -> float:
        """Stream time consumed by the VAD so far, in seconds."""
        return self._pos / VAD_RATE

    @property
    def held_bytes(self) -> int:
        """Bytes of audio the segmenter holds now (pre-roll, open turn, partial frame)."""
        return sum(a.nbytes for a in self._buf) + self._pending.nbytes

    def push(
        self,
        pcm: bytes | bytearray | memoryview | npt.NDArray[np.generic],
        sample_rate: int,
        *,
        channels: int = 1,
    ) -> list[SpeechTurn]:
        """Feed a chunk; returns the turns it completed (usually none).

        Args:
            pcm: float or int16 array (1-D, or ``[frames, channels]``), or int16 bytes.
            sample_rate: rate of this chunk in Hz.
            channels: channel count of interleaved bytes/1-D input; stereo is downmixed.
        """
        rate = check_rate(sample_rate)
        mono = to_mono_float(pcm, channels=channels, dtype="int16")
        turns: list[SpeechTurn] = []
        if rate != self._in_rate:
            turns += self._drain_resampler()
            self._in_rate = rate
            self._resampler = (
                None
                if rate == VAD_RATE
                else soxr.ResampleStream(rate, VAD_RATE, 1, dtype="float32", quality="HQ")
            )
        if mono.size:
            chunk = mono if self._resampler is None else self._resampler.resample_chunk(mono)
            turns += self._consume(np.asarray(chunk, dtype=np.float32))
        return turns

    def flush(self) -> list[SpeechTurn]:
        """End the stream: emit the open turn (if long enough) and reset for a new stream."""
        turns = self._drain_resampler()
        if self._pending.size:
            # A partial frame cannot go to webrtcvad; it is kept as audio, counted unvoiced,
            # so it never extends a turn (turns end at the last voiced frame).
            self._append(self._pending)
            self._pos += self._pending.size
            self._pending = np.zeros(0, dtype=np.float32)
        if self._in_turn:
            turns += self._close(cut=False)
        self.reset()
        return turns

    # -- internals -----------------------------------------------------------------

    def _drain_resampler(self) -> list[SpeechTurn]:
        if self._resampler is None:
            return []
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._resampler = None
        self._in_rate = 0
        return self._consume(np.asarray(tail, dtype=np.float32))

    def _append(self, samples: FloatArray) -> None:
        self._buf.append(samples)

    def _consume(self, samples: FloatArray) -> list[SpeechTurn]:
        """Run whole frames of 16 kHz audio through the VAD and the turn state machine."""
        if self._pending.size:
            samples = np.concatenate([self._pending, samples])
        n_frames = samples.size // self._frame
        usable = n_frames * self._frame
        self._pending = samples[usable:].copy()
        if n_frames == 0:
            return []
        body = samples[:usable]
        pcm = np.clip(np.rint(body * 32768.0), -32768, 32767).astype("<i2").tobytes()
        self._append(body)
        frame_bytes = self._frame * 2
        turns: list[SpeechTurn] = []
        is_speech = self._vad.is_speech
        for i in range(n_frames):
            voiced = is_speech(pcm[i * frame_bytes : (i + 1) * frame_bytes], VAD_RATE)
            start = self._pos
            if self._in_turn and start + self._frame - self._turn_audio_start() > self._max_turn:
                turns += self._close(cut=True)  # cut before this frame: turns never exceed max
            self._pos += self._frame
            if voiced:
                if not self._in_turn:
                    self._in_turn = True
                    self._speech_start = start
                    self._voiced = 0
                self._voiced += self._frame
                self._last_voiced_end = self._pos
            if self._in_turn:
                if self._pos - self._last_voiced_end >= self._end_silence:
                    turns += self._close(cut=False)
            else:
                self._trim_idle()
        return turns

    def _turn_audio_start(self) -> int:
        return max(self._speech_start - self._padding, self._floor, self._buf_start)

    def _trim_idle(self) -> None:
        """Keep only the pre-roll while no turn is open, so memory stays bounded."""
        keep_from = max(self._pos - self._padding, self._floor)
        if keep_from - self._buf_start > 4 * max(self._padding, self._frame):
            self._drop_before(keep_from)

    def _drop_before(self, index: int) -> None:
        audio = self._joined()
        cut = min(max(index - self._buf_start, 0), audio.size)
        rest = audio[cut:]
        self._buf = [rest] if rest.size else []
        self._buf_start += cut

    def _joined(self) -> FloatArray:
        if len(self._buf) == 1:
            return self._buf[0]
        joined = np.concatenate(self._buf) if self._buf else np.zeros(0, dtype=np.float32)
        self._buf = [joined] if joined.size else []
        return joined

    def _close(self, *, cut: bool) -> list[SpeechTurn]:
        """Close the open turn; emit it if it has enough voiced audio."""
        start = self._turn_audio_start()
        end = self._pos if cut else self._last_voiced_end
        voiced = self._voiced
        self._in_turn = False
        self._voiced = 0
        if voiced < self._min_voiced and not cut:
            return []
        audio = self._joined()[start - self._buf_start : end - self._buf_start].copy()
        self._floor = end
        self._drop_before(end)
        return [SpeechTurn(start / VAD_RATE, end / VAD_RATE, audio)]


def segment_audio(
    x: npt.NDArray[np.generic],
    sample_rate: int,
    *,
    aggressiveness: int = 2,
    frame_ms: int = 30,
    padding_ms: int = 150,
    min_speech_ms: int = 250,
    end_silence_ms: int = 600,
    max_turn_s: float = 30.0,
) -> list[SpeechTurn]:
    """Segment a whole recording (1-D, or ``[frames, channels]``) into speech turns."""
    segmenter = TurnSegmenter(
        aggressiveness=aggressiveness,
        frame_ms=frame_ms,
        padding_ms=padding_ms,
        min_speech_ms=min_speech_ms,
        end_silence_ms=end_silence_ms,
        max_turn_s=max_turn_s,
    )
    return segmenter.push(x, sample_rate) + segmenter.flush()
