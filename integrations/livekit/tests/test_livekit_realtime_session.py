"""The RealtimeModel/RealtimeSession API driven directly, as the AgentSession would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import llm
from livekit.plugins import sarsteer
from livekit_harness import QUESTION, SECOND, Speech, eventually, silence, to_frames
from sarsteer_guard.errors import GuardError
from sarsteer_guard.guard.events import GuardEvent, TextDelta, Turn
from sarsteer_guard.testing.scripted import ScriptedGuard
from sarsteer_guard.testing.speech import synthesize


async def read_text(ev: llm.GenerationCreatedEvent) -> str:
    """Drain a generation the way the session does; returns once every stream closed."""
    parts: list[str] = []
    async for msg in ev.message_stream:
        assert await msg.modalities == ["text"]
        async for _ in msg.audio_stream:
            raise AssertionError("text-only model produced audio")
        async for text in msg.text_stream:
            parts.append(text)
    async for _ in ev.function_stream:
        raise AssertionError("no tools")
    return "".join(parts)


def push(sess: sarsteer.RealtimeSession, audio: np.ndarray, **kw: int) -> None:
    for frame in to_frames(audio, **kw):
        sess.push_audio(frame)


@pytest.mark.espeak
async def test_own_vad_splits_a_continuous_stream_into_two_generations(speech: Speech) -> None:
    guard = ScriptedGuard(reply="Okay.", delay_s=0.0)
    model = sarsteer.RealtimeModel(guard)
    sess = model.session()
    events: list[str] = []
    generations: list[llm.GenerationCreatedEvent] = []
    sess.on("input_speech_started", lambda _: events.append("started"))
    sess.on("input_speech_stopped", lambda _: events.append("stopped"))
    sess.on("generation_created", generations.append)

    # One continuous stream, read in two halves: a turn that ends while an earlier
    # reply is still unread would supersede it (as a user speaking again does).
    push(sess, np.concatenate([silence(0.6), speech(QUESTION), silence(1.0)]))
    texts = [await read_text(g) for g in generations]
    push(sess, np.concatenate([speech(SECOND), silence(1.0)]))
    texts += [await read_text(g) for g in generations[1:]]

    assert events == ["started", "stopped", "started", "stopped"]
    assert texts == ["Okay.", "Okay."]
    assert [g.user_initiated for g in generations] == [False, False]
    assert len(guard.turns) == 2
    await model.aclose()


@pytest.mark.espeak
async def test_manual_commit_trims_48k_stereo_to_16k_speech(speech: Speech) -> None:
    guard = ScriptedGuard(reply="Fine.", delay_s=0.0)
    model = sarsteer.RealtimeModel(guard)
    sess = model.session(turn_detection_disabled=True)
    assert not sess.turn_detection
    q48 = synthesize(QUESTION, rate=48000)
    mono = np.concatenate([silence(1.0, 48000), q48, silence(1.0, 48000)])
    stereo = np.repeat(mono[:, None], 2, axis=1).reshape(-1)
    pcm = np.clip(np.rint(stereo * 32767), -32768, 32767).astype(np.int16)
    step = 48000 // 20 * 2
    for i in range(0, len(pcm), step):
        chunk = pcm[i : i + step]
        sess.push_audio(rtc.AudioFrame(chunk.tobytes(), 48000, 2, len(chunk) // 2))
    sess.commit_audio()
    assert sess.chat_ctx.items == []  # nothing textual is invented for the user turn
    text = await read_text(await sess.generate_reply())

    assert text == "Fine."
    turn = guard.turns[0]
    assert turn.sample_rate == 16000
    assert isinstance(turn.audio, np.ndarray)
    assert turn.audio.dtype == np.float32
    assert turn.audio.ndim == 1
    heard = ScriptedGuard.audio_seconds(turn)
    spoken = len(q48) / 48000
    assert spoken * 0.8 < heard < spoken + 0.6
    await model.aclose()


async def test_silence_only_commit_gives_an_empty_reply_without_a_guard_turn() -> None:
    guard = ScriptedGuard()
    model = sarsteer.RealtimeModel(guard, turn_detection=None)
    assert not model.capabilities.turn_detection
    sess = model.session()
    push(sess, silence(1.5))
    sess.commit_audio()

    assert await read_text(await sess.generate_reply(instructions="greet the user")) == ""
    assert guard.turns == []
    await model.aclose()


@pytest.mark.espeak
async def test_clear_audio_forgets_the_buffered_turn(speech: Speech) -> None:
    guard = ScriptedGuard()
    model = sarsteer.RealtimeModel(guard, turn_detection=None)
    sess = model.session()
    push(sess, speech(QUESTION))
    sess.clear_audio()
    sess.commit_audio()

    assert await read_text(await sess.generate_reply()) == ""
    assert guard.turns == []
    await model.aclose()


@pytest.mark.espeak
async def test_interrupt_closes_the_streams_and_cancels_the_guard(speech: Speech) -> None:
    guard = ScriptedGuard(reply="one two three four five six seven eight", delay_s=0.05)
    model = sarsteer.RealtimeModel(guard, turn_detection=None)
    sess = model.session()
    push(sess, speech(QUESTION))
    sess.commit_audio()
    ev = await sess.generate_reply()
    msg = await anext(aiter(ev.message_stream))
    first = await anext(aiter(msg.text_stream))

    sess.interrupt()
    rest = [t async for t in msg.text_stream]

    assert first == "one"
    assert len(rest) < 7
    await eventually(lambda: guard.cancelled)
    assert guard.cancelled == [guard.turns[0].turn_id]
    await model.aclose()


@pytest.mark.espeak
async def test_turn_context_comes_from_the_model_then_the_session(speech: Speech) -> None:
    guard = ScriptedGuard(delay_s=0.0)
    model = sarsteer.RealtimeModel(guard, turn_detection=None, context={"channel": "kids"})
    sess = model.session()

    async def one_turn() -> None:
        push(sess, speech(QUESTION))
        sess.commit_audio()
        await read_text(await sess.generate_reply())

    await one_turn()
    model.update_options(context={"channel": "adults"}, max_new_tokens=12)
    await one_turn()
    sess.update_options(context={"channel": "support", "tier": 2})
    await one_turn()
    sess.update_options(context=None)
    await one_turn()

    assert [dict(t.context) for t in guard.turns] == [
        {"channel": "kids"},
        {"channel": "adults"},
        {"channel": "support", "tier": 2},
        {"channel": "adults"},
    ]
    assert [t.max_new_tokens for t in guard.turns] == [None, 12, 12, 12]
    assert len({t.session_id for t in guard.turns}) == 1
    await model.aclose()


async def test_construction_does_no_io_and_a_given_guard_stays_the_callers() -> None:
    guard = ScriptedGuard()
    model = sarsteer.RealtimeModel(guard)
    assert not guard.started
    assert await model.start() is guard
    assert guard.started
    await model.aclose()
    await model.aclose()
    assert not guard.closed
    with pytest.raises(GuardError, match="closed"):
        model.session()


async def test_guard_is_built_lazily_from_options_and_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[dict[str, object]] = []

    def fake_guard(**kwargs: object) -> ScriptedGuard:
        built.append(kwargs)
        return ScriptedGuard()

    monkeypatch.setattr("sarsteer_guard.guard.core.Guard", fake_guard)
    model = sarsteer.RealtimeModel(
        model="tiny", policy="p.yaml", audit="sqlite:///a.db", engine="vllm"
    )
    assert built == []
    guard = await model.start()
    assert built == [
        {
            "model": "tiny",
            "policy": "p.yaml",
            "store": None,
            "audit": "sqlite:///a.db",
            "engine": "vllm",
        }
    ]
    assert isinstance(guard, ScriptedGuard)
    assert guard.started
    await model.aclose()
    assert guard.closed


async def test_remote_url_builds_a_remote_guard_or_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = sarsteer.RealtimeModel(remote_url="ws://guard:8080")
    assert model.model == "remote"

    urls: list[str] = []

    def fake_remote(url: str) -> ScriptedGuard:
        urls.append(url)
        return ScriptedGuard()

    monkeypatch.setattr("sarsteer_guard.remote.RemoteGuard", fake_remote)
    assert isinstance(await model.start(), ScriptedGuard)  # a failed start is retried
    assert urls == ["ws://guard:8080"]
    await model.aclose()

    with pytest.raises(GuardError, match="either guard= or remote_url="):
        sarsteer.RealtimeModel(ScriptedGuard(), remote_url="ws://guard:8080")


async def test_a_guard_that_raises_emits_a_recoverable_error() -> None:
    class Broken(ScriptedGuard):
        async def respond(self, turn: Turn) -> AsyncIterator[GuardEvent]:
            raise RuntimeError("boom")
            yield  # pragma: no cover

    model = sarsteer.RealtimeModel(Broken(), turn_detection=None)
    sess = model.session()
    errors: list[llm.RealtimeModelError] = []
    sess.on("error", errors.append)
    push(sess, np.full(16000, 0.1, dtype=np.float32))  # loud, not speech: sent untrimmed
    sess.commit_audio()

    assert await read_text(await sess.generate_reply()) == ""
    assert len(errors) == 1
    assert errors[0].recoverable
    assert "boom" in str(errors[0].error)
    await model.aclose()


async def test_interrupt_closes_a_non_generator_event_iterator() -> None:
    """A RemoteGuard-style iterator learns of the barge-in through ``aclose()``."""

    class Events:
        def __init__(self, turn_id: str) -> None:
            self.turn_id = turn_id
            self.closed = False
            self.sent = 0

        def __aiter__(self) -> Events:
            return self

        async def __anext__(self) -> TextDelta:
            if self.sent:
                await asyncio.Event().wait()  # the rest never comes
            self.sent += 1
            return TextDelta(turn_id=self.turn_id, text="Hello")

        async def aclose(self) -> None:
            self.closed = True

    opened: list[Events] = []

    class IteratorGuard(ScriptedGuard):
        def respond(self, turn: Turn) -> AsyncIterator[GuardEvent]:
            opened.append(Events(turn.turn_id))
            return opened[-1]

    model = sarsteer.RealtimeModel(IteratorGuard(), turn_detection=None)
    sess = model.session()
    push(sess, np.full(16000, 0.1, dtype=np.float32))
    sess.commit_audio()
    ev = await sess.generate_reply()
    msg = await anext(aiter(ev.message_stream))
    assert await anext(aiter(msg.text_stream)) == "Hello"

    sess.interrupt()

    await eventually(lambda: opened[0].closed)
    await model.aclose()
