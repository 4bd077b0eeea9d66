"""The input audio buffer: decode the session's format, detect turns or wait for commit.

Every committed user turn leaves here as float32 mono at 16 kHz (the rate the guard and
webrtcvad use), so turns from server VAD, manual commit and audio items join the
conversation the same way. Memory is bounded: at most ``max_turn_s`` of audio waits
for a commit (beyond that append is refused), and the segmenter cuts turns at it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from sarsteer_guard.audio.pcm import FloatArray
from sarsteer_guard.audio.vad import VAD_RATE, SpeechTurn, TurnSegmenter
from sarsteer_guard.server.realtime.errors import RealtimeError
from sarsteer_guard.server.realtime.session import AudioFormat, ServerVad


def _g711_table(alaw: bool) -> FloatArray:
    """The 256 G.711 code words (mu-law or A-law) as float samples in [-1, 1]."""
    codes = np.arange(256, dtype=np.int32)
    if alaw:
        v = codes ^ 0x55
        exponent, mantissa = (v >> 4) & 7, v & 15
        magnitude = np.where(
            exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1)
        )
        sign = np.where(v & 0x80, 1, -1)
    else:
        v = ~codes & 0xFF
        exponent, mantissa = (v >> 4) & 7, v & 15
        magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
        sign = np.where(v & 0x80, -1, 1)
    return (sign * magnitude / 32768.0).astype(np.float32)


_TABLES = {"pcmu": _g711_table(alaw=False), "pcma": _g711_table(alaw=True)}


def decode(audio: bytes, fmt: AudioFormat) -> FloatArray:
    """Encoded input audio as float32 mono samples at ``fmt.rate``."""
    if fmt.encoding == "pcm16":
        if len(audio) % 2:
            raise RealtimeError(
                "invalid_value", "pcm16 audio must have an even number of bytes", param="audio"
            )
        return np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768.0
    return _TABLES[fmt.encoding][np.frombuffer(audio, dtype=np.uint8)]


def to_vad_rate(samples: FloatArray, rate: int) -> FloatArray:
    """Samples resampled to 16 kHz (the guard's and webrtcvad's rate)."""
    if rate == VAD_RATE or not samples.size:
        return samples
    return np.asarray(soxr.resample(samples, rate, VAD_RATE), dtype=np.float32)


@dataclass(frozen=True)
class SpeechStarted:
    """Server VAD heard speech begin (``audio_start_ms`` from the buffer's start)."""

    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    """Server VAD closed a turn: its audio is committed."""

    audio_end_ms: int
    audio: FloatArray


BufferEvent = SpeechStarted | SpeechStopped


class InputAudioBuffer:
    """Audio appended since the last commit, with or without server VAD.

    Invariants: with VAD, a :class:`SpeechStarted` always precedes its
    :class:`SpeechStopped`; without VAD, the held audio never exceeds ``max_turn_s``.
    """

    def __init__(self, fmt: AudioFormat, vad: ServerVad | None, max_turn_s: float) -> None:
        self.fmt = fmt
        self.vad = vad
        self.max_turn_s = max_turn_s
        self._segmenter: TurnSegmenter | None = (
            None if vad is None else vad.segmenter(max_turn_s).new_segmenter()
        )
        self._held: list[FloatArray] = []
        self._held_samples = 0

    @property
    def held_bytes(self) -> int:
        """Bytes of audio held now: what the connection charges to its audio budgets."""
        if self._segmenter is not None:
            return self._segmenter.held_bytes
        return sum(a.nbytes for a in self._held)

    @property
    def in_speech(self) -> bool:
        """True while server VAD has an open turn."""
        return self._segmenter is not None and self._segmenter.in_speech

    def append(self, audio: bytes) -> list[BufferEvent]:
        """Add encoded audio; with VAD, returns the speech starts and stops it caused."""
        samples = decode(audio, self.fmt)
        if self._segmenter is None:
            if self._held_samples + samples.size > self.max_turn_s * self.fmt.rate:
                raise RealtimeError(
                    "input_audio_buffer_too_large",
                    f"more than {self.max_turn_s:g} s of audio without a commit: commit "
                    "turns sooner (or enable server_vad)",
                )
            self._held.append(samples)
            self._held_samples += samples.size
            return []
        return self._segment(samples)

    def _segment(self, samples: FloatArray) -> list[BufferEvent]:
        seg = self._segmenter
        if seg is None:  # only called with VAD on
            return []
        was_speaking = seg.in_speech
        turns = seg.push(samples, self.fmt.rate)
        events: list[BufferEvent] = []
        for turn in turns:
            if not was_speaking:
                events.append(SpeechStarted(_ms(turn.start_s)))
            events.append(self._stopped(turn))
            was_speaking = False
        if seg.in_speech and not was_speaking:
            start = max(
                0.0, seg.position_s - (self.vad.prefix_padding_ms if self.vad else 0) / 1000
            )
            events.append(SpeechStarted(_ms(start)))
        return events

    @staticmethod
    def _stopped(turn: SpeechTurn) -> SpeechStopped:
        return SpeechStopped(_ms(turn.end_s), turn.audio)

    def commit(self) -> FloatArray:
        """Everything held (manual) or the open turn (VAD), at 16 kHz; RealtimeError if empty."""
        if self._segmenter is not None:
            turns = self._segmenter.flush()
            audio = np.concatenate([t.audio for t in turns]) if turns else np.zeros(0, np.float32)
        else:
            audio = (
                to_vad_rate(np.concatenate(self._held), self.fmt.rate)
                if self._held
                else (np.zeros(0, np.float32))
            )
        self.clear()
        if not audio.size:
            raise RealtimeError(
                "input_audio_buffer_commit_empty",
                "the input audio buffer holds no speech to commit: append audio first",
            )
        return audio

    def clear(self) -> None:
        """Drop held audio and any open VAD turn."""
        self._held.clear()
        self._held_samples = 0
        if self._segmenter is not None:
            self._segmenter.reset()


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
