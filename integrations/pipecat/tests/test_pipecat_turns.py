"""The Pipecat turn state machine on plain bytes: no pipeline, no frames, real speech."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from sarsteer_guard.audio.vad import SegmenterSettings

from pipecat_sarsteer.turns import (
    DEFAULT_PRE_ROLL_SECS,
    PRE_ROLL_MARGIN_SECS,
    Action,
    Interrupt,
    Phase,
    PreRoll,
    SpeechStarted,
    SpeechStopped,
    TurnSettings,
    TurnSource,
    TurnTaking,
    UserTurn,
)

RATE = 16000
Speech = Callable[[str], np.ndarray]


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def ramp(seconds: float, start: int = 0) -> bytes:
    """Distinct int16 samples, so a test can tell which audio ended up in a turn."""
    n = int(seconds * RATE)
    return ((np.arange(start, start + n) % 30000) + 1).astype("<i2").tobytes()


def feed(machine: TurnTaking, audio: bytes, rate: int = RATE, channels: int = 1) -> list[Action]:
    """Push ``audio`` in 20 ms chunks, as a transport does; all actions in order."""
    step = rate * 20 // 1000 * 2 * channels
    actions: list[Action] = []
    for i in range(0, len(audio), step):
        actions += machine.audio(audio[i : i + step], rate, channels)
    return actions


def kinds(actions: list[Action]) -> list[str]:
    names = {SpeechStarted: "started", SpeechStopped: "stopped", Interrupt: "interrupt"}
    return [names.get(type(a), "turn") for a in actions]


def turns(actions: list[Action]) -> list[UserTurn]:
    return [a for a in actions if isinstance(a, UserTurn)]


# -- pre-roll --------------------------------------------------------------------------------
def test_pre_roll_keeps_the_most_recent_budget() -> None:
    pre = PreRoll()
    for i in range(10):
        pre.push(bytes([i]) * 100, budget=250)
    kept = pre.take()
    assert bytes(kept) == bytes([7]) * 100 + bytes([8]) * 100 + bytes([9]) * 100  # >= 250
    assert pre.take() == kept  # taking does not consume: the next turn may need it
    pre.clear()
    assert pre.take() == bytearray()


# -- pipeline turns --------------------------------------------------------------------------
def test_pipeline_turn_opens_with_the_pre_roll_and_ends_on_vad() -> None:
    machine = TurnTaking(TurnSettings(mode="pipeline"))
    assert machine.source is TurnSource.PIPELINE_VAD
    before, during = ramp(1.0), ramp(1.0, start=16000)
    assert feed(machine, before) == []  # no VAD frame yet: pre-roll only
    assert machine.vad_started() == []
    assert machine.phase is Phase.HEARD
    assert feed(machine, during) == []
    [turn] = turns(machine.vad_stopped())
    assert (turn.sample_rate, turn.channels, turn.sample_format) == (RATE, 1, "int16")
    assert isinstance(turn.audio, bytes)
    assert turn.audio.endswith(during)
    pre_roll = turn.audio[: -len(during)]
    assert before.endswith(pre_roll)
    assert DEFAULT_PRE_ROLL_SECS <= len(pre_roll) / 2 / RATE < DEFAULT_PRE_ROLL_SECS + 0.03
    assert machine.phase is Phase.SILENT


def test_pre_roll_is_sized_from_the_pipeline_vad_unless_given() -> None:
    machine = TurnTaking(TurnSettings(mode="pipeline"))
    machine.vad_params(start_secs=0.1)
    assert machine.pre_roll_secs == pytest.approx(0.1 + PRE_ROLL_MARGIN_SECS)
    feed(machine, ramp(1.0))
    machine.vad_started()
    [turn] = turns(machine.vad_stopped())
    assert len(turn.audio) / 2 / RATE == pytest.approx(0.4, abs=0.021)
    fixed = TurnTaking(TurnSettings(mode="pipeline", pre_roll_secs=0.2))
    fixed.vad_params(start_secs=0.1)
    assert fixed.pre_roll_secs == 0.2


def test_short_turns_are_dropped_and_long_ones_keep_their_end() -> None:
    settings = TurnSettings(mode="pipeline", pre_roll_secs=0.0, min_turn_secs=0.5, max_turn_secs=1)
    machine = TurnTaking(settings)
    feed(machine, ramp(0.02))
    machine.vad_started()
    feed(machine, ramp(0.3))
    assert machine.vad_stopped() == []  # a click or a false start
    machine.vad_started()
    long = ramp(3.0, start=7)
    feed(machine, long)
    [turn] = turns(machine.vad_stopped())
    assert turn.audio == long[-2 * RATE :]  # only the last max_turn_secs


def test_user_aggregator_frames_decide_and_vad_frames_become_hints() -> None:
    machine = TurnTaking(TurnSettings(mode="pipeline", pre_roll_secs=0.0))
    machine.vad_started()
    machine.user_started()  # both arrive for one turn: it opens once
    assert (machine.source, machine.phase) == (TurnSource.PIPELINE_USER, Phase.CONFIRMED)
    first, second = ramp(0.5), ramp(0.5, start=9000)
    feed(machine, first)
    assert machine.vad_stopped() == []  # a pause inside the user's turn
    assert machine.phase is Phase.CONFIRMED
    feed(machine, second)
    [turn] = turns(machine.user_stopped())
    assert turn.audio == first + second


def test_vad_blip_the_aggregator_rejected_is_dropped() -> None:
    machine = TurnTaking(TurnSettings(mode="pipeline", pre_roll_secs=0.0))
    machine.user_started()
    feed(machine, ramp(0.5))
    assert len(turns(machine.user_stopped())) == 1
    machine.vad_started()  # VAD heard something the turn strategies did not take
    blip = ramp(0.3, start=20000)
    feed(machine, blip)
    assert machine.vad_stopped() == []
    assert machine.phase is Phase.SILENT
    machine.user_started()
    real = ramp(0.5, start=3)
    feed(machine, real)
    [turn] = turns(machine.user_stopped())
    assert turn.audio == real


def test_a_format_change_mid_turn_restarts_the_collection() -> None:
    machine = TurnTaking(TurnSettings(mode="pipeline", pre_roll_secs=0.0))
    machine.user_started()
    feed(machine, ramp(0.5))
    stereo = ramp(1.0, start=11)  # read as 24 kHz stereo from here on
    feed(machine, stereo, rate=24000, channels=2)
    [turn] = turns(machine.user_stopped())
    assert (turn.sample_rate, turn.channels, turn.audio) == (24000, 2, stereo)


# -- own segmentation ------------------------------------------------------------------------
@pytest.mark.espeak
def test_auto_mode_segments_itself_and_interrupts_from_the_second_turn(
    speech: Speech, pause: Callable[[float], np.ndarray]
) -> None:
    machine = TurnTaking()  # auto
    assert machine.source is TurnSource.PROBING
    first = feed(machine, pcm16(np.concatenate([pause(0.3), speech("What is the weather?")])))
    first += feed(machine, pcm16(pause(1.0)))
    # The first turn interrupts nothing (pipeline VAD may still show up); announced late.
    assert kinds(first) == ["started", "stopped", "turn"]
    assert machine.source is TurnSource.OWN
    [turn] = turns(first)
    assert (turn.sample_rate, turn.channels, turn.sample_format) == (RATE, 1, "float32")
    assert isinstance(turn.audio, np.ndarray)
    assert len(turn.audio) / RATE == pytest.approx(len(speech("What is the weather?")) / RATE, 0.2)
    second = feed(machine, pcm16(np.concatenate([speech("And tomorrow?"), pause(1.0)])))
    # Now it behaves like a VAD: announce and barge in at barge_in_ms, then the turn.
    assert kinds(second) == ["started", "interrupt", "stopped", "turn"]


@pytest.mark.espeak
def test_pipeline_vad_retires_own_segmentation(
    speech: Speech, pause: Callable[[float], np.ndarray]
) -> None:
    machine = TurnTaking()
    feed(machine, pcm16(np.concatenate([speech("Hello there, how are you?"), pause(1.0)])))
    assert machine.source is TurnSource.OWN
    assert machine.user_started() == []  # the user was silent: no own speech to close
    assert machine.source is TurnSource.PIPELINE_USER
    assert feed(machine, pcm16(speech("Hello there, how are you?"))) == []  # no own turns now
    [turn] = turns(machine.user_stopped())
    assert turn.sample_format == "int16"


@pytest.mark.espeak
def test_switching_to_the_pipeline_closes_announced_own_speech(
    speech: Speech, pause: Callable[[float], np.ndarray]
) -> None:
    machine = TurnTaking(TurnSettings(mode="auto"))
    feed(machine, pcm16(np.concatenate([speech("Hello there, how are you?"), pause(1.0)])))
    talking = feed(machine, pcm16(speech("Tell me a long story about the sea.")[: RATE // 2]))
    assert kinds(talking) == ["started", "interrupt"]
    assert kinds(machine.vad_params(start_secs=0.2)) == ["stopped"]
    assert machine.source is TurnSource.PIPELINE_VAD


@pytest.mark.espeak
def test_own_mode_ignores_pipeline_frames(
    speech: Speech, pause: Callable[[float], np.ndarray]
) -> None:
    machine = TurnTaking(TurnSettings(mode="own"))
    assert machine.vad_params(0.2) == []
    assert machine.user_started() == []
    actions = feed(machine, pcm16(np.concatenate([speech("What time is it?"), pause(1.0)])))
    assert machine.user_stopped() == []  # no second copy of the turn
    assert machine.vad_stopped() == []
    assert machine.source is TurnSource.OWN
    assert kinds(actions) == ["started", "interrupt", "stopped", "turn"]


@pytest.mark.espeak
def test_speech_the_segmenter_drops_closes_what_was_announced(
    speech: Speech, pause: Callable[[float], np.ndarray]
) -> None:
    strict = SegmenterSettings(frame_ms=20, min_speech_ms=5000)  # every utterance is too short
    machine = TurnTaking(TurnSettings(mode="own", segmenter=strict))
    actions = feed(machine, pcm16(np.concatenate([speech("Hm, well."), pause(1.0)])))
    assert kinds(actions) == ["started", "interrupt", "stopped"]
    assert machine.phase is Phase.SILENT


@pytest.mark.espeak
def test_quiet_own_mode_neither_announces_nor_interrupts(
    speech: Speech, pause: Callable[[float], np.ndarray]
) -> None:
    settings = TurnSettings(mode="own", emit_user_speaking_frames=False, allow_interruptions=False)
    machine = TurnTaking(settings)
    actions = feed(machine, pcm16(np.concatenate([speech("What time is it?"), pause(1.0)])))
    assert kinds(actions) == ["turn"]


@pytest.mark.espeak
def test_flush_answers_the_turn_open_at_the_end_of_the_stream(speech: Speech) -> None:
    machine = TurnTaking(TurnSettings(mode="own"))
    actions = feed(machine, pcm16(speech("Is anybody there?")))  # no trailing silence
    assert turns(actions) == []
    assert kinds(actions) == ["started", "interrupt"]
    flushed = machine.flush()
    assert kinds(flushed) == ["stopped", "turn"]
    assert TurnTaking(TurnSettings(mode="pipeline")).flush() == []


# -- the service's settings ------------------------------------------------------------------
def test_params_take_segmenter_settings_and_the_older_keywords() -> None:
    from pydantic import ValidationError

    from pipecat_sarsteer import SARSteerParams

    assert SARSteerParams().segmenter == SegmenterSettings(frame_ms=20)
    own = SegmenterSettings(aggressiveness=3, end_silence_ms=400)
    params = SARSteerParams(turn_detection="own", segmenter=own, barge_in_ms=100)
    settings = params.turn_settings()
    assert (settings.mode, settings.segmenter, settings.barge_in_ms) == ("own", own, 100)
    legacy = SARSteerParams(vad_aggressiveness=1, vad_end_silence_ms=450, max_turn_secs=10)
    assert legacy.segmenter == SegmenterSettings(
        aggressiveness=1, frame_ms=20, end_silence_ms=450, max_turn_s=10
    )
    with pytest.raises(ValidationError, match="not both"):
        SARSteerParams(segmenter=own, vad_min_speech_ms=100)
