"""Where the user's turns begin and end: a small state machine with no Pipecat in it.

The service feeds it what the pipeline delivers (audio, the pipeline VAD's and user
aggregator's speaking frames, the VAD's ``start_secs``) and performs the
:data:`Action` list each call returns: announce speech like a VAD would, interrupt the
bot, answer a finished turn. Keeping Pipecat out makes every path testable with plain
bytes (``tests/test_pipecat_turns.py``), as the LiveKit plugin's ``input_audio.py`` is.

Two facts decide the machine's state:

- :class:`TurnSource`, who decides turns. ``"pipeline"`` mode starts at
  ``PIPELINE_VAD``; ``"own"`` mode stays at ``OWN`` (pipeline frames are then ignored);
  ``"auto"`` starts at ``PROBING`` (own webrtcvad segmentation, silent: pipeline VAD
  may still show up), becomes ``OWN`` after a whole own turn, and moves to a pipeline
  source at the first sign of pipeline VAD (a ``SpeechControlParamsFrame`` or a
  speaking frame). ``PIPELINE_USER`` (the user aggregator's
  ``UserStarted/StoppedSpeakingFrame`` seen) differs from ``PIPELINE_VAD`` in that VAD
  frames become hints: the aggregator's turn may outlast a VAD pause.
- :class:`Phase`, where the user is in a turn. Pipeline sources: ``HEARD`` = VAD heard
  speech, ``CONFIRMED`` = the user aggregator opened the turn. Own sources: ``HEARD`` =
  the segmenter opened a turn, ``CONFIRMED`` = it lasted ``barge_in_ms`` (the bot was
  interrupted and, in ``OWN``, ``UserStartedSpeakingFrame`` pushed).

Pipeline turns carry a pre-roll: ``UserStartedSpeakingFrame`` arrives after speech has
begun (by the VAD's ``start_secs``), so the last ``pre_roll_secs`` of audio are always
kept and open every pipeline turn. Memory is bounded: the pre-roll, one turn of at most
``max_turn_secs``, and the segmenter's own bounded buffer.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from sarsteer_guard.audio.pcm import FloatArray
from sarsteer_guard.audio.vad import VAD_RATE, SegmenterSettings, SpeechTurn, TurnSegmenter

#: Pre-roll added to the pipeline VAD's ``start_secs`` (the speech it consumed before
#: announcing the turn), as Pipecat's OpenAI Realtime service does.
PRE_ROLL_MARGIN_SECS = 0.3
#: Pre-roll when the pipeline does not say what its VAD's ``start_secs`` is.
DEFAULT_PRE_ROLL_SECS = 0.5
#: Own segmentation's defaults: Pipecat transports deliver 20 ms frames.
DEFAULT_SEGMENTER = SegmenterSettings(frame_ms=20)

TurnMode = Literal["auto", "pipeline", "own"]


class TurnSource(enum.Enum):
    """Who decides where turns begin and end."""

    PROBING = "probing"  # auto mode: own segmentation, silent until a whole turn
    OWN = "own"  # own segmentation announces speech and interrupts like a VAD
    PIPELINE_VAD = "pipeline_vad"  # the pipeline's VAD frames
    PIPELINE_USER = "pipeline_user"  # the user aggregator's frames; VAD frames are hints


class Phase(enum.Enum):
    """Where the user is in a turn (see the module docstring per source)."""

    SILENT = "silent"
    HEARD = "heard"
    CONFIRMED = "confirmed"


_OWN_SOURCES = frozenset({TurnSource.PROBING, TurnSource.OWN})


@dataclass(frozen=True)
class SpeechStarted:
    """Push ``UserStartedSpeakingFrame`` downstream (own segmentation, like a VAD)."""


@dataclass(frozen=True)
class SpeechStopped:
    """Push ``UserStoppedSpeakingFrame`` downstream."""


@dataclass(frozen=True)
class Interrupt:
    """The user talks over the bot: cancel the response and broadcast an interruption."""


@dataclass(frozen=True, eq=False)  # eq on an ndarray field would raise
class UserTurn:
    """A finished turn to answer: int16 bytes as the pipeline sent them, or 16 kHz float32."""

    audio: bytes | FloatArray = field(repr=False)
    sample_rate: int
    channels: int
    sample_format: Literal["int16", "float32"]


Action = SpeechStarted | SpeechStopped | Interrupt | UserTurn


@dataclass(frozen=True)
class TurnSettings:
    """How the machine takes turns (the service builds it from ``SARSteerParams``)."""

    mode: TurnMode = "auto"
    pre_roll_secs: float | None = None  # None: VAD start_secs + margin, else the default
    min_turn_secs: float = 0.2
    max_turn_secs: float = 30.0
    barge_in_ms: int = 200
    allow_interruptions: bool = True
    emit_user_speaking_frames: bool = True
    segmenter: SegmenterSettings = DEFAULT_SEGMENTER


class PreRoll:
    """The most recent audio, at least ``budget`` bytes of it once that much arrived."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def push(self, audio: bytes, budget: int) -> None:
        """Keep ``audio``; drop the oldest chunks while the rest still covers ``budget``."""
        self._chunks.append(audio)
        self._size += len(audio)
        while self._chunks and self._size - len(self._chunks[0]) >= budget:
            self._size -= len(self._chunks.popleft())

    def take(self) -> bytearray:
        """A copy of what is kept (the buffer stays: the next turn may need it too)."""
        return bytearray(b"".join(self._chunks))

    def clear(self) -> None:
        """Forget everything (the audio format changed)."""
        self._chunks.clear()
        self._size = 0


class TurnTaking:
    """The turn state machine of one pipeline; every input returns the actions to perform.

    Not thread-safe (one per service, driven from its frame task). Audio is int16 PCM as
    ``InputAudioRawFrame`` carries it.
    """

    def __init__(self, settings: TurnSettings | None = None, *, sample_rate: int = 16000):
        self.settings = settings or TurnSettings()
        #: The pipeline's input rate (``audio_in_sample_rate``), until audio says otherwise.
        self.sample_rate = sample_rate
        self.source = {
            "auto": TurnSource.PROBING,
            "own": TurnSource.OWN,
            "pipeline": TurnSource.PIPELINE_VAD,
        }[self.settings.mode]
        self.phase = Phase.SILENT
        self._pre_roll_secs = self.settings.pre_roll_secs
        self._pre_roll = PreRoll()
        self._format: tuple[int, int] | None = None  # (sample_rate, channels) of the audio
        self._audio = bytearray()  # the open pipeline turn's audio
        self._segmenter: TurnSegmenter | None = None
        self._speech_since = 0.0  # stream time the open own-segmentation speech began

    # -- inputs ------------------------------------------------------------------------------
    def audio(self, pcm: bytes, sample_rate: int, channels: int = 1) -> list[Action]:
        """A chunk of the user's audio (every ``InputAudioRawFrame``)."""
        if (sample_rate, channels) != self._format:
            # A format change mid-turn cannot be stitched: start collecting afresh.
            self._format = (sample_rate, channels)
            self._pre_roll.clear()
            self._audio = bytearray()
        if self._collecting:
            self._audio.extend(pcm)
            limit = self._bytes_for(self.settings.max_turn_secs)
            if len(self._audio) > limit:
                del self._audio[: len(self._audio) - limit]
        self._pre_roll.push(pcm, self._bytes_for(self.pre_roll_secs))
        if self.source in _OWN_SOURCES:
            return self._segment(pcm, sample_rate, channels)
        return []

    def vad_params(self, start_secs: float) -> list[Action]:
        """The pipeline VAD's parameters (``SpeechControlParamsFrame``): it has a VAD."""
        actions = self._follow_pipeline(user_frames=False)
        if actions is None:
            return []
        if self.settings.pre_roll_secs is None:
            self._pre_roll_secs = start_secs + PRE_ROLL_MARGIN_SECS
        return actions

    def user_started(self) -> list[Action]:
        """``UserStartedSpeakingFrame``: the user aggregator opened a turn."""
        return self._pipeline_start(user_frames=True)

    def vad_started(self) -> list[Action]:
        """``VADUserStartedSpeakingFrame``: the VAD heard speech."""
        return self._pipeline_start(user_frames=False)

    def user_stopped(self) -> list[Action]:
        """``UserStoppedSpeakingFrame``: the user aggregator ended the turn."""
        actions = self._follow_pipeline(user_frames=True)
        if actions is None:
            return []
        return actions + self._end_pipeline_turn()

    def vad_stopped(self) -> list[Action]:
        """``VADUserStoppedSpeakingFrame``: a turn end, or only a pause (``PIPELINE_USER``)."""
        actions = self._follow_pipeline(user_frames=False)
        if actions is None:
            return []
        if self.source is TurnSource.PIPELINE_VAD:
            return actions + self._end_pipeline_turn()
        if self.phase is Phase.HEARD:
            # Speech the turn strategies did not take (a cough): not part of the next turn.
            self.phase = Phase.SILENT
            self._audio = bytearray()
        return actions

    def flush(self) -> list[Action]:
        """End of the stream (``EndFrame``): a turn open in own segmentation is answered."""
        if self.source not in _OWN_SOURCES or self._segmenter is None:
            return []
        actions: list[Action] = []
        for speech in self._segmenter.flush():
            actions += self._own_turn(speech)
        return actions

    @property
    def pre_roll_secs(self) -> float:
        """Audio kept from before a pipeline turn's start frame."""
        return DEFAULT_PRE_ROLL_SECS if self._pre_roll_secs is None else self._pre_roll_secs

    # -- pipeline turns ----------------------------------------------------------------------
    @property
    def _collecting(self) -> bool:
        return self.source not in _OWN_SOURCES and self.phase is not Phase.SILENT

    def _bytes_for(self, seconds: float) -> int:
        rate, channels = self._format or (self.sample_rate, 1)
        return int(seconds * rate) * channels * 2

    def _follow_pipeline(self, *, user_frames: bool) -> list[Action] | None:
        """The pipeline shows VAD: leave own segmentation (auto). None: ignore the frame."""
        if self.settings.mode == "own":
            return None
        actions: list[Action] = []
        if self.source in _OWN_SOURCES:
            actions = self._end_own_speech()
            self._segmenter = None
            self.source = TurnSource.PIPELINE_VAD
        if user_frames:
            self.source = TurnSource.PIPELINE_USER
        return actions

    def _pipeline_start(self, *, user_frames: bool) -> list[Action]:
        actions = self._follow_pipeline(user_frames=user_frames)
        if actions is None:
            return []
        if self.phase is Phase.SILENT:
            # VAD and user-turn start frames both arrive for one turn: open it once.
            self._audio = self._pre_roll.take()
            self.phase = Phase.HEARD
        if user_frames:
            self.phase = Phase.CONFIRMED
        return actions

    def _end_pipeline_turn(self) -> list[Action]:
        audio, self._audio = bytes(self._audio), bytearray()
        was_open, self.phase = self.phase is not Phase.SILENT, Phase.SILENT
        if not was_open or self._format is None or not audio:
            return []
        if len(audio) < self._bytes_for(self.settings.min_turn_secs):
            return []  # a click or a false start
        rate, channels = self._format
        return [UserTurn(audio, rate, channels, "int16")]

    # -- own segmentation --------------------------------------------------------------------
    def _segment(self, pcm: bytes, sample_rate: int, channels: int) -> list[Action]:
        if self._segmenter is None:
            self._segmenter = self.settings.segmenter.new_segmenter()
        seg = self._segmenter
        finished = seg.push(pcm, sample_rate, channels=channels)
        actions: list[Action] = []
        if seg.in_speech and not finished:
            actions += self._own_speech(seg.position_s)
        for speech in finished:
            actions += self._own_turn(speech)
        if not seg.in_speech and not finished and self.phase is not Phase.SILENT:
            # Speech the segmenter dropped (a click, a cough): close what was announced.
            actions += self._end_own_speech()
        return actions

    def _own_speech(self, position_s: float) -> list[Action]:
        if self.phase is Phase.SILENT:
            self.phase = Phase.HEARD
            self._speech_since = position_s
        elif (
            self.phase is Phase.HEARD
            and position_s - self._speech_since >= self.settings.barge_in_ms / 1000
        ):
            return self._confirm_own_speech()
        return []

    def _confirm_own_speech(self) -> list[Action]:
        """Speech long enough to be a barge-in: behave like a pipeline VAD would."""
        self.phase = Phase.CONFIRMED
        if self.source is TurnSource.PROBING:
            return []  # auto mode's first turn: nothing to interrupt, pipeline VAD may appear
        actions: list[Action] = []
        if self.settings.emit_user_speaking_frames:
            actions.append(SpeechStarted())
        if self.settings.allow_interruptions:
            actions.append(Interrupt())  # the bot may still be speaking an earlier answer
        return actions

    def _start_pushed(self) -> bool:
        """Whether a SpeechStarted went out for the open own speech (needs a SpeechStopped)."""
        return (
            self.phase is Phase.CONFIRMED
            and self.source is TurnSource.OWN
            and self.settings.emit_user_speaking_frames
        )

    def _end_own_speech(self) -> list[Action]:
        actions: list[Action] = [SpeechStopped()] if self._start_pushed() else []
        self.phase = Phase.SILENT
        return actions

    def _own_turn(self, speech: SpeechTurn) -> list[Action]:
        actions: list[Action] = []
        if self.settings.emit_user_speaking_frames:
            if not self._start_pushed():
                actions.append(SpeechStarted())
            actions.append(SpeechStopped())
        self.source = TurnSource.OWN  # a whole turn came without pipeline VAD
        self.phase = Phase.SILENT
        actions.append(UserTurn(speech.audio, VAD_RATE, 1, "float32"))
        return actions
