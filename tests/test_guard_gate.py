"""The refusal gate on plain strings: what is held, what is served, what replaces a refusal."""

from __future__ import annotations

from sarsteer_guard.guard.gate import RefusalGate
from sarsteer_guard.refusal import RefusalDetector

MESSAGE = "Let us talk about something else."


def run(gate: RefusalGate, deltas: list[str]) -> list[str]:
    """Feed every delta; return the non-empty pieces served while streaming."""
    out = []
    for delta in deltas:
        text = gate.feed(delta)
        if text:
            out.append(text)
    return out


def test_a_refusal_inside_the_window_is_replaced_before_anything_is_served() -> None:
    gate = RefusalGate(RefusalDetector(), MESSAGE, window=20)
    deltas = ["I cannot ", "assist with ", "that request, ", "sorry."]
    served = run(gate, deltas)
    assert served == [MESSAGE]  # nothing of the model's refusal got out
    assert gate.replaced
    assert gate.feed("more text") == ""  # the rest of the reply is dropped
    verdict = gate.close("".join(deltas))
    assert verdict.tail == ""
    assert verdict.served == MESSAGE
    assert verdict.refused
    assert verdict.replaced
    assert verdict.keyword is not None


def test_a_refusal_after_the_window_is_served_and_still_reported() -> None:
    gate = RefusalGate(RefusalDetector(), MESSAGE, window=10)
    deltas = ["Sure, here ", "are the steps. ", "Actually, I cannot assist with that."]
    served = run(gate, deltas)
    assert served == deltas  # released once the window showed no refusal, then streamed
    assert not gate.replaced
    verdict = gate.close("".join(deltas))
    assert verdict.served == "".join(deltas)
    assert verdict.tail == ""
    assert verdict.refused  # the full reply is a refusal, even though it was spoken
    assert not verdict.replaced


def test_a_reply_that_ends_inside_the_window_is_decided_at_close() -> None:
    refusal = RefusalGate(RefusalDetector(), MESSAGE, window=64)
    assert run(refusal, ["I cannot ", "do that."]) == []
    verdict = refusal.close("I cannot do that.")
    assert (verdict.tail, verdict.served, verdict.refused, verdict.replaced) == (
        MESSAGE,
        MESSAGE,
        True,
        True,
    )

    answer = RefusalGate(RefusalDetector(), MESSAGE, window=64)
    assert run(answer, ["It is ", "noon."]) == []
    verdict = answer.close("It is noon.")
    assert verdict.tail == "It is noon."
    assert verdict.served == "It is noon."
    assert not verdict.refused
    assert not verdict.replaced


def test_shadow_mode_and_no_message_pass_everything_through() -> None:
    deltas = ["I cannot ", "assist with that."]
    for gate in (
        RefusalGate(RefusalDetector(), MESSAGE, window=64, shadow=True),
        RefusalGate(RefusalDetector(), None, window=64),
    ):
        assert run(gate, deltas) == deltas  # nothing held back, nothing replaced
        verdict = gate.close("".join(deltas))
        assert verdict.tail == ""
        assert verdict.served == "".join(deltas)
        assert verdict.refused  # still detected, for the decision and the audit
        assert not verdict.replaced


def test_extra_keywords_count() -> None:
    gate = RefusalGate(RefusalDetector(("off limits",)), MESSAGE, window=12)
    assert run(gate, ["That is ", "off limits."]) == [MESSAGE]
    assert gate.close("That is off limits.").keyword == "off limits"
