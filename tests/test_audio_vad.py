"""Turn segmentation on real synthesised speech: offline, streaming, every rate."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from sarsteer_guard.audio import (
    VAD_RATE,
    SpeechTurn,
    TurnSegmenter,
    float_to_pcm16,
    resample,
    segment_audio,
)
from sarsteer_guard.errors import AudioError
from sarsteer_guard.testing.speech import espeak_available, speech_with_pauses

pytestmark = [
    pytest.mark.espeak,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed"),
]

TEXTS = (
    "What is the weather like in Paris tomorrow?",
    "Set a timer for ten minutes.",
    "How do I kill a python process that hangs?",
    "Play some jazz in the kitchen, please.",
)
TOLERANCE_S = 0.3


@functools.cache
def recording(rate: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    return speech_with_pauses(TEXTS, 1.0, rate)


def assert_matches(turns: list[SpeechTurn], truth: list[tuple[float, float]]) -> None:
    got = [(round(t.start_s, 3), round(t.end_s, 3)) for t in turns]
    assert len(turns) == len(truth), f"turns {got} vs truth {truth}"
    for turn, (start, end) in zip(turns, truth, strict=True):
        assert abs(turn.start_s - start) <= TOLERANCE_S, f"{got} vs {truth}"
        assert abs(turn.end_s - end) <= TOLERANCE_S, f"{got} vs {truth}"
        assert turn.sample_rate == VAD_RATE
        assert turn.audio.dtype == np.float32
        assert turn.audio.size == round((turn.end_s - turn.start_s) * VAD_RATE)


def stream(seg: TurnSegmenter, chunks: list[np.ndarray], rate: int) -> list[SpeechTurn]:
    turns: list[SpeechTurn] = []
    for chunk in chunks:
        turns += seg.push(chunk, rate)
    return turns + seg.flush()


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
@pytest.mark.parametrize("stereo", [False, True])
def test_offline_finds_each_utterance(rate: int, stereo: bool) -> None:
    x, truth = recording(rate)
    data = np.stack([x, 0.6 * x], axis=1) if stereo else x
    assert_matches(segment_audio(data, rate), truth)


def test_padding_zero_gives_speech_boundaries() -> None:
    x, truth = recording(16000)
    turns = segment_audio(x, 16000, padding_ms=0)
    assert_matches(turns, truth)
    # Without pre-roll the start is the first voiced frame: within two frames of the truth.
    for turn, (start, _) in zip(turns, truth, strict=True):
        assert abs(turn.start_s - start) <= 0.06


def test_turn_audio_is_the_input_span() -> None:
    x, _ = recording(16000)
    for turn in segment_audio(x, 16000):
        start = round(turn.start_s * 16000)
        np.testing.assert_allclose(turn.audio, x[start : start + turn.audio.size], atol=1e-4)


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_streaming_odd_chunks_equals_offline(rate: int) -> None:
    x, truth = recording(rate)
    rng = np.random.default_rng(rate)
    cuts = np.cumsum(rng.integers(1, int(0.09 * rate), size=x.size // 100))
    chunks = [c for c in np.split(x, cuts[cuts < x.size]) if c.size]
    int16 = [np.frombuffer(float_to_pcm16(c), dtype="<i2") for c in chunks]

    turns = stream(TurnSegmenter(), int16, rate)

    assert_matches(turns, truth)
    offline = segment_audio(x, rate)
    assert [(t.start_s, t.end_s) for t in turns] == [(t.start_s, t.end_s) for t in offline]


def test_streaming_24k_50ms_frames_as_bytes_stereo() -> None:
    x16, truth = recording(16000)
    x = resample(x16, 16000, 24000)  # LiveKit's default room rate
    interleaved = np.stack([x, x], axis=1).reshape(-1)
    data = float_to_pcm16(interleaved)
    frame = 1200 * 2 * 2  # 50 ms, 2 channels, 2 bytes
    seg = TurnSegmenter()
    turns: list[SpeechTurn] = []
    for i in range(0, len(data), frame):
        turns += seg.push(data[i : i + frame], 24000, channels=2)
    turns += seg.flush()
    assert_matches(turns, truth)


def test_in_speech_and_turns_arrive_during_stream() -> None:
    x, _truth = recording(16000)
    seg = TurnSegmenter(end_silence_ms=500)
    seen_speech = False
    for i in range(0, x.size, 320):
        done = seg.push(x[i : i + 320], 16000)
        seen_speech |= seg.in_speech
        if done:
            # A turn completes during the following pause, not at the end of the stream.
            assert seg.position_s < done[0].end_s + 0.6
            assert not seg.in_speech
    assert seen_speech
    assert seg.flush() == []  # the last turn ended inside the trailing silence


def test_rate_change_mid_stream() -> None:
    x16, truth = recording(16000)
    half = round(5.95 * 16000)  # inside the pause after the second utterance
    second = resample(x16[half:], 16000, 48000)
    seg = TurnSegmenter()
    turns = seg.push(x16[:half], 16000) + seg.push(second, 48000) + seg.flush()
    assert_matches(turns, truth)


def test_flush_resets_stream_time() -> None:
    x, _truth = recording(16000)
    seg = TurnSegmenter()
    first = seg.push(x, 16000) + seg.flush()
    second = seg.push(x, 16000) + seg.flush()
    assert [(t.start_s, t.end_s) for t in first] == [(t.start_s, t.end_s) for t in second]


def test_open_turn_is_emitted_on_flush() -> None:
    x, truth = recording(16000)
    cut = round(truth[0][1] * 16000) - 1600  # stop 100 ms before the first utterance ends
    seg = TurnSegmenter()
    assert seg.push(x[:cut], 16000) == []
    turns = seg.flush()
    assert len(turns) == 1
    assert abs(turns[0].start_s - truth[0][0]) <= TOLERANCE_S
    assert turns[0].end_s == pytest.approx(cut / 16000, abs=0.031)


def test_max_turn_cuts_long_turns() -> None:
    x, truth = recording(16000)
    turns = segment_audio(x, 16000, max_turn_s=1.0)
    assert all(t.duration_s <= 1.0 + 1e-9 for t in turns)
    assert len(turns) > len(truth)
    for start, end in truth:  # every utterance is still covered, without gaps
        covering = [t for t in turns if t.end_s > start and t.start_s < end]
        assert covering[0].start_s <= start + TOLERANCE_S
        assert covering[-1].end_s >= end - TOLERANCE_S
        for a, b in itertools.pairwise(covering):
            assert b.start_s == pytest.approx(a.end_s)


def test_min_speech_drops_short_turns_and_silence_gives_none() -> None:
    x, _ = recording(16000)
    assert segment_audio(x, 16000, min_speech_ms=5000) == []
    assert segment_audio(np.zeros(5 * 16000, np.float32), 16000) == []


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"aggressiveness": 4}, "aggressiveness must be 0-3"),
        ({"aggressiveness": "2"}, "must be an integer"),
        ({"frame_ms": 25}, "frame_ms must be 10, 20 or 30"),
        ({"padding_ms": -1}, "padding_ms must be >= 0"),
        ({"end_silence_ms": 10}, "end_silence_ms must be >= frame_ms"),
        ({"max_turn_s": 0}, "max_turn_s"),
    ],
)
def test_settings_validation(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(AudioError, match=needle):
        TurnSegmenter(**kwargs)  # type: ignore[arg-type]  # invalid values on purpose


def test_bad_push_input() -> None:
    seg = TurnSegmenter()
    with pytest.raises(AudioError, match="outside"):
        seg.push(np.zeros(160, np.float32), 16)
    with pytest.raises(AudioError, match="whole number"):
        seg.push(b"\x00\x00\x00", 16000)


@pytest.mark.parametrize("noise_dbfs", [-50, -35])
def test_background_noise_does_not_merge_or_split_turns(noise_dbfs: int) -> None:
    x, truth = recording(16000)
    rng = np.random.default_rng(7)
    noisy = x + rng.standard_normal(x.size).astype(np.float32) * np.float32(10 ** (noise_dbfs / 20))
    assert_matches(segment_audio(noisy, 16000, aggressiveness=3), truth)
