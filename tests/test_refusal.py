import pytest

from sarsteer_guard.refusal import DEFAULT_REFUSAL_KEYWORDS, RefusalDetector


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("I cannot assist with that.", "cannot assist"),
        ("Sorry, but I can\u2019t help with this request.", "can't help"),
        ("AS AN AI, I must say no", "As an AI"),
    ],
)
def test_detects_default_refusals(text: str, keyword: str) -> None:
    verdict = RefusalDetector()(text)
    assert verdict.refused
    assert verdict.keyword == keyword


def test_compliant_text_is_not_a_refusal() -> None:
    assert not RefusalDetector()("Sure, here are the steps.").refused


def test_extra_keywords_and_disabling_defaults() -> None:
    custom = RefusalDetector(["let's talk about something else"], use_defaults=False)
    assert custom("Hmm, let's talk about something else!").refused
    assert not custom("I cannot assist with that.").refused
    assert "I cannot" in DEFAULT_REFUSAL_KEYWORDS
