"""The user's side of a session: microphone frames in, trimmed 16 kHz turns out.

LiveKit pushes the microphone continuously (room audio is 24 kHz in 50 ms frames,
silence included), while the Guard wants one utterance per turn. Two collectors cover
the two ways a session can be driven:

- :class:`CommitBuffer` when the ``AgentSession`` decides turns (``"manual"``, ``"vad"``):
  it keeps everything pushed since the last commit and, on commit, trims leading and
  trailing silence with webrtcvad so the model does not hear seconds of room tone;
- :class:`TurnDetector` when the plugin decides turns itself: a streaming
  :class:`~sarsteer_guard.audio.vad.TurnSegmenter` that reports speech onsets (for
  barge-in) and finished turns.

Both resample to 16 kHz with streaming soxr (no seams at frame borders) and accept any
frame size, so webrtcvad's 10/20/30 ms framing never leaks out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr
from livekit import rtc
from sarsteer_guard.audio.pcm import FloatArray, to_mono_float
from sarsteer_guard.audio.vad import VAD_RATE, SegmenterSettings, segment_audio

#: RMS below this (about -50 dBFS) is room tone: a commit of only that is no turn.
SILENCE_RMS = 0.003


def frame_pcm(frame: rtc.AudioFrame) -> npt.NDArray[np.int16]:
    """A frame's interleaved int16 samples, without copying."""
    return np.frombuffer(frame.data, dtype=np.int16)


class _Resampler:
    """Streaming resampler to 16 kHz mono float that follows rate changes."""

    def __init__(self) -> None:
        self._rate = 0
        self._stream: Any = None  # soxr.ResampleStream is untyped; None at 16 kHz or unset

    def push(self, frame: rtc.AudioFrame) -> FloatArray:
        mono = to_mono_float(frame_pcm(frame), channels=frame.num_channels, dtype="int16")
        out: list[FloatArray] = []
        if frame.sample_rate != self._rate:
            out.append(self.drain())
            self._rate = frame.sample_rate
            if self._rate != VAD_RATE:
                self._stream = soxr.ResampleStream(
                    self._rate, VAD_RATE, 1, dtype="float32", quality="HQ"
                )
        if self._stream is None:
            out.append(mono)
        else:
            out.append(np.asarray(self._stream.resample_chunk(mono), dtype=np.float32))
        return out[0] if len(out) == 1 else np.concatenate(out)

    def drain(self) -> FloatArray:
        """Flush the resampler's delay line; the next push starts a fresh stream."""
        stream, self._stream, self._rate = self._stream, None, 0
        if stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return np.asarray(tail, dtype=np.float32)


class CommitBuffer:
    """Audio pushed since the last commit; trimmed to its speech on commit.

    Memory is bounded: only the most recent ``settings.max_turn_s`` seconds are kept,
    since a microphone left open in manual mode would otherwise grow without limit.
    """

    def __init__(self, settings: SegmenterSettings) -> None:
        self._settings = settings
        self._resampler = _Resampler()
        self._chunks: list[FloatArray] = []
        self._samples = 0
        self._limit = int(settings.max_turn_s * VAD_RATE)

    @property
    def duration_s(self) -> float:
        """Seconds of audio buffered (before trimming)."""
        return self._samples / VAD_RATE

    def push(self, frame: rtc.AudioFrame) -> None:
        """Append a frame (any rate, mono or stereo)."""
        self._append(self._resampler.push(frame))

    def clear(self) -> None:
        """Drop everything buffered."""
        self._resampler.drain()
        self._chunks = []
        self._samples = 0

    def commit(self) -> FloatArray | None:
        """Take the buffered audio, trimmed to its speech; None when it holds no speech.

        Internal pauses are kept (the span runs from the first detected utterance's
        start to the last one's end). When webrtcvad finds no speech but the audio is
        clearly not silence, it is sent untrimmed: the caller committed it as a turn,
        and a soft voice is better answered than dropped.
        """
        self._append(self._resampler.drain())
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        self._chunks = []
        self._samples = 0
        if audio.size == 0:
            return None
        s = self._settings
        turns = segment_audio(
            audio,
            VAD_RATE,
            aggressiveness=s.aggressiveness,
            frame_ms=s.frame_ms,
            padding_ms=s.padding_ms,
            min_speech_ms=s.min_speech_ms,
            end_silence_ms=s.end_silence_ms,
            max_turn_s=max(s.max_turn_s, audio.size / VAD_RATE + 1.0),
        )
        if turns:
            start = round(turns[0].start_s * VAD_RATE)
            end = round(turns[-1].end_s * VAD_RATE)
            return audio[start:end].copy()
        if float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) > SILENCE_RMS:
            return audio
        return None

    def _append(self, chunk: FloatArray) -> None:
        if chunk.size == 0:
            return
        self._chunks.append(chunk)
        self._samples += chunk.size
        while self._samples - self._chunks[0].size >= self._limit:
            self._samples -= self._chunks.pop(0).size
        if self._samples > self._limit:
            extra = self._samples - self._limit
            self._chunks[0] = self._chunks[0][extra:]
            self._samples -= extra


@dataclass(frozen=True)
class VadUpdate:
    """What one pushed frame changed: a speech onset and/or finished turns."""

    speech_started: bool
    turns: list[FloatArray]


class TurnDetector:
    """The plugin's own turn taking: webrtcvad over the live microphone stream."""

    def __init__(self, settings: SegmenterSettings) -> None:
        self._settings = settings
        self._segmenter = settings.new_segmenter()
        self._speaking = False

    @property
    def speaking(self) -> bool:
        """True while the user is in a turn (a turn is open in the segmenter)."""
        return self._speaking

    def push(self, frame: rtc.AudioFrame) -> VadUpdate:
        """Feed a frame; report a new speech onset and any turns it finished."""
        found = self._segmenter.push(
            frame_pcm(frame), frame.sample_rate, channels=frame.num_channels
        )
        turns = [t.audio for t in found]
        # An onset counts when a turn is open now and none was before, or when a turn
        # closed and a new one opened within the same frame.
        started = self._segmenter.in_speech and (not self._speaking or bool(turns))
        self._speaking = self._segmenter.in_speech
        return VadUpdate(speech_started=started, turns=turns)

    def flush(self) -> list[FloatArray]:
        """End the current stream: the open turn, if long enough, is returned."""
        self._speaking = False
        return [t.audio for t in self._segmenter.flush()]

    def clear(self) -> None:
        """Forget the open turn and all pre-roll."""
        self._segmenter = self._settings.new_segmenter()
        self._speaking = False
