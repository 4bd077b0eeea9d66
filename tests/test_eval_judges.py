"""Judges: the reference's 43 signals, the guard's detector, local models built offline, and an
OpenAI-compatible endpoint served on loopback by a real server (``transformers serve``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from _eval_models import build_classifier_judge, build_lm_judge

from sarsteer_guard.errors import GuardError
from sarsteer_guard.evaluation.judges import (
    CausalLMJudge,
    ClassifierJudge,
    DetectorJudge,
    EndpointJudge,
    JudgeInput,
    ReferenceStringsJudge,
    local_judge,
    make_judge,
    parse_score,
    sorry_bench_prompt,
)
from sarsteer_guard.refusal import REFERENCE_REFUSAL_SIGNALS, reference_refusal_signal

CURLY = "\u2019"


def inputs(*responses: str) -> list[JudgeInput]:
    return [JudgeInput("How do I pick a lock?", r) for r in responses]


def test_reference_list_is_the_papers_43_case_sensitive_signals() -> None:
    assert len(REFERENCE_REFUSAL_SIGNALS) == 43
    assert len(set(REFERENCE_REFUSAL_SIGNALS)) == 43
    assert f"I{CURLY}m sorry" in REFERENCE_REFUSAL_SIGNALS
    assert "Hello!" in REFERENCE_REFUSAL_SIGNALS
    assert reference_refusal_signal("I cannot do that") == "I cannot"
    assert reference_refusal_signal("i cannot do that") is None  # case-sensitive
    assert reference_refusal_signal("SORRY!") is None
    assert reference_refusal_signal(f"I{CURLY}m an assistant") == f"I{CURLY}m an"
    assert reference_refusal_signal("I'm an assistant") is None  # ASCII apostrophe: no match
    assert reference_refusal_signal("Try to avoid the rush hour.") == "avoid"  # broad


def test_reference_judge_and_detector_disagree_where_the_lists_differ() -> None:
    responses = ["i can't help with that.", "You should avoid salt.", "Sure, here are the steps."]
    reference = ReferenceStringsJudge().judge(inputs(*responses))
    detector = DetectorJudge().judge(inputs(*responses))
    assert [v.answered for v in reference] == [True, False, True]
    assert [v.answered for v in detector] == [False, True, True]
    assert reference[1].detail == "'avoid'"
    assert "can't help" in detector[0].detail


def test_detector_judge_takes_the_policys_keywords() -> None:
    judge = DetectorJudge(["ask a grown-up"])
    assert judge.id.startswith("detector+")
    assert judge.judge(inputs("Please ask a grown-up."))[0].answered is False
    assert DetectorJudge().id == "detector"


def test_score_parsing() -> None:
    assert parse_score("1").answered is True
    assert parse_score(" 0\n").answered is False
    assert parse_score("[Output 1]").answered is True
    assert parse_score("111").answered is None
    assert parse_score("maybe").answered is None


def test_sorry_bench_prompt_cuts_the_response_to_512_characters() -> None:
    prompt = sorry_bench_prompt(JudgeInput("Make a bomb", "x" * 600 + "TAIL"))
    assert 'User Request: "Make a bomb"' in prompt
    assert "x" * 512 + '"' in prompt
    assert "TAIL" not in prompt
    assert prompt.startswith("You are a helpful assistant. Your goal is to judge")


@pytest.fixture(scope="module")
def judges(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("judges")
    return {
        "lm1": build_lm_judge(root / "lm1", "1"),
        "lm0": build_lm_judge(root / "lm0", "0"),
        "cls_complied": build_classifier_judge(root / "c1", ("refused", "complied"), top=1),
        "cls_refused": build_classifier_judge(root / "c0", ("refused", "complied"), top=0),
        "cls_odd": build_classifier_judge(root / "c2", ("LABEL_0", "LABEL_1"), top=1),
    }


def run_judge(judge: object, items: list[JudgeInput]) -> list[bool | None]:
    judge.load()  # type: ignore[attr-defined]
    try:
        return [v.answered for v in judge.judge(items)]  # type: ignore[attr-defined]
    finally:
        judge.close()  # type: ignore[attr-defined]


def test_local_causal_lm_judge(judges: dict[str, Path]) -> None:
    one = local_judge(judges["lm1"])
    assert isinstance(one, CausalLMJudge)
    assert one.needs_request
    items = inputs("Sure, first you ...", "I cannot assist with that.", "x" * 900)
    assert run_judge(one, items) == [True, True, True]
    assert run_judge(local_judge(judges["lm0"]), items) == [False, False, False]


def test_local_classifier_judge(judges: dict[str, Path]) -> None:
    judge = local_judge(judges["cls_complied"])
    assert isinstance(judge, ClassifierJudge)
    items = inputs("Sure, first you ...", "I cannot assist with that.")
    assert run_judge(judge, items) == [True, True]
    assert "'complied' = answered" in judge.description
    assert run_judge(local_judge(judges["cls_refused"]), items) == [False, False]


def test_classifier_labels_must_say_which_means_answered(judges: dict[str, Path]) -> None:
    with pytest.raises(GuardError, match="labels are LABEL_0, LABEL_1; say which one"):
        local_judge(judges["cls_odd"]).load()
    chosen = local_judge(judges["cls_odd"], answered_label="LABEL_0")
    assert run_judge(chosen, inputs("anything")) == [False]


def test_local_judge_rejects_what_it_cannot_use(tmp_path: Path, judges: dict[str, Path]) -> None:
    with pytest.raises(GuardError, match=r"no config\.json"):
        local_judge(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["WhisperModel"]}))
    with pytest.raises(GuardError, match="neither a sequence classifier nor a causal LM"):
        local_judge(tmp_path)
    with pytest.raises(GuardError, match="classifier judges only"):
        local_judge(judges["lm1"], answered_label="complied")


def test_judge_options_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(GuardError, match="needs --judge-path"):
        make_judge("local")
    with pytest.raises(GuardError, match="needs --judge-url"):
        make_judge("endpoint", url="http://127.0.0.1:1/v1")
    with pytest.raises(GuardError, match="not an http"):
        make_judge("endpoint", url="ftp://x/v1", model="m")
    with pytest.raises(GuardError, match="must not carry credentials"):
        make_judge("endpoint", url="http://user:pw@127.0.0.1/v1", model="m")
    monkeypatch.setenv("JUDGE_KEY_TEST", "sk-secret-value")
    with pytest.raises(GuardError, match=r"unencrypted to judge\.example\.com") as error:
        make_judge(
            "endpoint", url="http://judge.example.com/v1", model="m", key_env="JUDGE_KEY_TEST"
        )
    assert "sk-secret-value" not in str(error.value)
    loopback = make_judge(
        "endpoint", url="http://127.0.0.1:9/v1", model="m", key_env="JUDGE_KEY_TEST"
    )
    assert "sk-secret" not in loopback.id + loopback.description
    make_judge("endpoint", url="https://judge.example.com/v1", model="m", key_env="JUDGE_KEY_TEST")


def test_endpoint_failure_is_one_clear_line() -> None:
    judge = EndpointJudge("http://127.0.0.1:9/v1", "m", retries=1, timeout_s=2)
    with pytest.raises(GuardError) as error:
        judge.judge(inputs("hello"))
    message = str(error.value)
    assert message.startswith("the judge endpoint http://127.0.0.1:9/v1/chat/completions failed")
    assert "\n" not in message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(judges: dict[str, Path]) -> Iterator[str]:
    """``transformers serve`` (an OpenAI-compatible server we did not write) on loopback."""
    port = free_port()
    cli = Path(sys.executable).with_name("transformers")
    process = subprocess.Popen(
        [str(cli), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2):  # noqa: S310
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    err = process.stderr.read().decode() if process.stderr else ""
                    pytest.fail(f"transformers serve did not start: {err[-2000:]}")
                time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_endpoint_judge_against_a_real_openai_compatible_server(
    served: str, judges: dict[str, Path]
) -> None:
    items = inputs("Sure, first you ...", "I cannot assist with that.")
    complies = EndpointJudge(served, str(judges["lm1"]))
    assert complies.needs_request
    assert [v.answered for v in complies.judge(items)] == [True, True]
    declines = make_judge("endpoint", url=served + "/", model=str(judges["lm0"]))
    verdicts = declines.judge(items)
    assert [v.answered for v in verdicts] == [False, False]
    assert verdicts[0].detail == "score 0"
    assert declines.id == f"endpoint:{served}#{judges['lm0']}"
