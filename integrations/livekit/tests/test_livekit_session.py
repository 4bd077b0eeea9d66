"""The plugin inside a real AgentSession: turns, replies, barge-in, refusals, errors."""

from __future__ import annotations

import pytest
from livekit.agents import llm
from livekit.plugins import sarsteer
from livekit_harness import (
    QUESTION,
    SECOND,
    Harness,
    HarnessFactory,
    Speech,
    eventually,
    silence,
)
from sarsteer_guard.testing.scripted import ScriptedGuard

pytestmark = pytest.mark.espeak


async def test_manual_commit_streams_the_guard_reply_through_tts(
    harness_factory: HarnessFactory, speech: Speech
) -> None:
    guard = ScriptedGuard(reply="Sure, here are the steps.", delay_s=0.005)
    h: Harness = await harness_factory(sarsteer.RealtimeModel(guard), turn_detection="manual")
    question = speech(QUESTION)
    await h.mic.play(silence(1.0))
    await h.mic.play(question)
    await h.mic.play(silence(1.0))
    h.session.commit_user_turn()

    replies = await h.wait_replies(1)

    assert replies == ["Sure, here are the steps."]
    assert "".join(h.tts.texts).strip() == "Sure, here are the steps."
    assert h.speaker.frames > 0
    assert len(guard.turns) == 1
    turn = guard.turns[0]
    assert turn.sample_rate == 16000
    heard = ScriptedGuard.audio_seconds(turn)
    spoken = len(question) / 24000
    # Trimmed: the two seconds of room tone are gone, the question is all there.
    assert spoken * 0.8 < heard < spoken + 0.6
    assert turn.session_id == h.rt_session.session_id
    assert [d.turn_id for d in h.decisions] == [turn.turn_id]
    assert not h.decisions[0].refused


async def test_interrupt_cancels_the_guard_turn(
    harness_factory: HarnessFactory, speech: Speech
) -> None:
    long_reply = " ".join(f"Step {i}." for i in range(1, 40))
    guard = ScriptedGuard(reply=long_reply, delay_s=0.05)
    h: Harness = await harness_factory(sarsteer.RealtimeModel(guard), turn_detection="manual")
    await h.mic.play(speech(QUESTION))
    await h.mic.play(silence(0.3))
    h.session.commit_user_turn()
    await h.wait_for(lambda: "speaking" in h.agent_states)

    await h.session.interrupt()
    replies = await h.wait_replies(1)

    assert guard.cancelled == [guard.turns[0].turn_id]
    assert h.interrupted == [True]
    assert long_reply.startswith(replies[0])
    assert len(replies[0]) < len(long_reply)
    assert h.decisions == []  # a cancelled turn reaches no decision


async def test_refused_turn_emits_the_decision(
    harness_factory: HarnessFactory, speech: Speech
) -> None:
    guard = ScriptedGuard(refuse=True, refusal_message="I can't help with that.", delay_s=0.0)
    h: Harness = await harness_factory(sarsteer.RealtimeModel(guard), turn_detection="manual")
    await h.mic.play(speech(QUESTION))
    h.session.commit_user_turn()

    replies = await h.wait_replies(1)

    assert replies == ["I can't help with that."]
    assert len(h.decisions) == 1
    decision = h.decisions[0]
    assert decision.refused
    assert decision.text == "I can't help with that."
    assert decision.session_id == h.rt_session.session_id


async def test_guard_error_is_reported_and_the_session_goes_on(
    harness_factory: HarnessFactory, speech: Speech
) -> None:
    guard = ScriptedGuard(reply="Back again.", fail_with="model crashed; retry the turn")
    h: Harness = await harness_factory(sarsteer.RealtimeModel(guard), turn_detection="manual")
    await h.mic.play(speech(QUESTION))
    h.session.commit_user_turn()
    await h.wait_for(lambda: h.errors)

    err = h.errors[0]
    assert err.recoverable
    assert isinstance(err.error, sarsteer.GuardTurnError)
    assert err.error.event.kind == "model"
    assert "model crashed" in str(err.error)

    guard.fail_with = None
    await h.mic.play(speech(QUESTION))
    h.session.commit_user_turn()
    await h.wait_for(lambda: h.replies == ["Back again."])
    assert len(guard.turns) == 2


async def test_own_turn_detection_answers_each_utterance(
    harness_factory: HarnessFactory, speech: Speech
) -> None:
    guard = ScriptedGuard(reply="Noted.", delay_s=0.0)
    h: Harness = await harness_factory(sarsteer.RealtimeModel(guard), turn_detection="realtime_llm")
    assert h.rt_session.turn_detection
    generations: list[llm.GenerationCreatedEvent] = []
    h.rt_session.on("generation_created", generations.append)

    for part in (silence(0.5), speech(QUESTION), silence(1.2)):
        await h.mic.play(part)
    await h.wait_replies(1)
    for part in (speech(SECOND), silence(1.2)):
        await h.mic.play(part)
    replies = await h.wait_replies(2)

    assert [g.user_initiated for g in generations] == [False, False]
    assert replies == ["Noted.", "Noted."]
    assert len(guard.turns) == 2
    heard = [ScriptedGuard.audio_seconds(t) for t in guard.turns]
    for seconds, text in zip(heard, (QUESTION, SECOND), strict=True):
        spoken = len(speech(text)) / 24000
        assert spoken * 0.8 < seconds < spoken + 0.6
    assert len(h.decisions) == 2


async def test_speaking_over_the_agent_interrupts_it(
    harness_factory: HarnessFactory, speech: Speech
) -> None:
    long_reply = " ".join(f"Step {i}." for i in range(1, 40))
    guard = ScriptedGuard(reply=long_reply, delay_s=0.05)
    h: Harness = await harness_factory(sarsteer.RealtimeModel(guard), turn_detection="realtime_llm")
    await h.mic.play(speech(QUESTION))
    await h.mic.play(silence(1.0))
    await h.wait_for(lambda: "speaking" in h.agent_states)

    guard.reply = "Second answer."
    await h.mic.play(speech(SECOND))
    # Still mid-utterance (no end of turn yet): the onset alone cancels the reply.
    await eventually(lambda: guard.cancelled)
    assert len(guard.turns) == 1
    assert guard.cancelled == [guard.turns[0].turn_id]
    await h.mic.play(silence(1.0))
    replies = await h.wait_replies(2)

    assert guard.cancelled == [guard.turns[0].turn_id]
    assert h.interrupted[0] is True
    assert replies[1] == "Second answer."
