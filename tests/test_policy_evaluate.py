"""Policy semantics: first match, presets and overrides, shadow mode, layers, vector keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from sarsteer_guard.defaults import DEFAULT_BENIGN, DEFAULT_HARMFUL, DEFAULT_PROMPT
from sarsteer_guard.errors import PolicyError
from sarsteer_guard.policy import (
    PRESETS,
    LayerSelection,
    Policy,
    parse_condition,
    parse_policy,
    run_policy_tests,
)

HEAD = """\
name: demo
version: "7"
model: "Qwen/Qwen2-Audio-*"
calibration:
  harmful: cal/harmful.jsonl
  benign: cal/benign.jsonl
"""


def policy(body: str, head: str = HEAD) -> Policy:
    return parse_policy(head + body, source="demo.yaml")


RULES = policy(
    """\
defaults:
  preset: balanced
refusal:
  message: "Sorry."
rules:
  - name: kids-young
    when: {channel: kids, age: {lt: 13}}
    preset: strict
    alpha: 0.3
    audit: {record: all}
  - name: kids
    when: {channel: kids}
    preset: strict
  - name: trial
    when:
      user_tier: [free, trial]
      locale: {matches: ["en-*", "fr"]}
    mode: shadow
    preset: permissive
  - name: late
    when: {channel: kids, age: {lt: 99}}
    alpha: 5
"""
)


def test_first_matching_rule_wins_and_no_match_uses_defaults() -> None:
    assert RULES.evaluate({"channel": "kids", "age": 9}).rule == "kids-young"
    # "late" also holds for age 20 but "kids" comes first.
    assert RULES.evaluate({"channel": "kids", "age": 20}).rule == "kids"
    assert RULES.evaluate({"channel": "kids", "age": 20}).rule_index == 1
    default = RULES.evaluate({"channel": "web"})
    assert default.rule is None
    assert default.rule_index is None
    assert default.alpha == PRESETS["balanced"].alpha == 0.1


def test_presets_and_explicit_numbers() -> None:
    young = RULES.evaluate({"channel": "kids", "age": 9})
    assert young.alpha == 0.3
    assert young.preset is None
    assert RULES.evaluate({"channel": "kids"}).alpha == PRESETS["strict"].alpha == 0.2
    assert RULES.evaluate({"channel": "kids"}).preset == "strict"
    trial = RULES.evaluate({"user_tier": "free", "locale": "en-GB"})
    assert trial.alpha == PRESETS["permissive"].alpha == 0.05
    # Presets change alpha only: k and lambda (and so the vectors) stay the calibration's.
    assert {(d.k, d.lam) for d in RULES.possible_decisions()} == {(10, 1.0)}


def test_rule_overrides_layer_over_defaults_field_by_field() -> None:
    p = policy(
        """\
calibration:
  harmful: h.jsonl
  benign: b.jsonl
  k: 4
  lambda: 0.5
defaults:
  alpha: 0.15
  layers: "2-5"
audit: {record: refused, retention_days: 400, hash_fields: [user_id]}
rules:
  - name: r
    when: {x: 1}
    k: 8
    beta: {3: 0.5}
    audit: {record: all}
    steer_positions: prompt_only
    system_prompt: Be brief.
""",
        head='name: demo\nversion: "7"\nmodel: m\n',
    )
    base, rule = p.evaluate({}), p.evaluate({"x": 1})
    assert (base.alpha, base.k, base.lam) == (0.15, 4, 0.5)
    assert (rule.alpha, rule.k, rule.lam) == (0.15, 8, 0.5)
    assert rule.resolve_layers(8) == [2, 3, 4, 5]
    assert rule.resolve_beta(6) == [1.0, 1.0, 1.0, 0.5, 1.0, 1.0]
    assert rule.audit.record == "all"
    assert rule.audit.retention_days == 400
    assert rule.audit.hash_fields == ("user_id",)
    assert rule.steer_positions == "prompt_only"
    assert rule.prompt_only
    assert base.steer_positions == "last_and_generated"
    assert rule.system_prompt == "Be brief."
    assert base.system_prompt is None


def test_shadow_mode_per_policy_and_per_rule() -> None:
    trial = RULES.evaluate({"user_tier": "trial", "locale": "fr"})
    assert trial.mode == "shadow"
    assert trial.shadow
    assert RULES.evaluate({"channel": "kids"}).mode == "enforce"
    whole = policy("mode: shadow\nrules:\n  - name: r\n    when: {x: 1}\n    mode: enforce\n")
    assert whole.evaluate({}).shadow
    assert whole.evaluate({"x": 1}).mode == "enforce"


def test_refusal_message_keywords_failure_mode_and_identity() -> None:
    d = RULES.evaluate({"channel": "kids"})
    assert d.refusal_message == "Sorry."
    assert d.spoken_refusal == "Sorry."
    assert "Sorry." in d.detector_keywords
    assert d.failure_mode == "fail_closed"
    assert (d.policy_name, d.policy_version, d.policy_hash) == (
        "demo",
        "7",
        RULES.content_hash,
    )
    assert len(RULES.content_hash) == 64
    assert policy("").evaluate({}).spoken_refusal  # a default message exists


def test_content_hash_is_sha256_of_the_file_bytes(tmp_path: Path) -> None:
    import hashlib

    from sarsteer_guard.policy import load_policy

    path = tmp_path / "p.yaml"
    path.write_bytes((HEAD + "# a comment changes the hash\n").encode())
    assert load_policy(path).content_hash == hashlib.sha256(path.read_bytes()).hexdigest()


def test_conditions_operators_and_types() -> None:
    def holds(when: object, context: dict[str, str | int | float | bool | None]) -> bool:
        return parse_condition(when).matches(context)

    assert holds({"channel": "kids"}, {"channel": "kids"})
    assert not holds({"channel": "kids"}, {"channel": "Kids"})  # case-sensitive
    assert holds({"tier": {"in": ["free", "trial"]}}, {"tier": "trial"})
    assert holds({"tier": ["free", "trial"]}, {"tier": "free"})
    assert holds({"locale": {"matches": "en-*"}}, {"locale": "en-GB"})
    assert not holds({"locale": {"matches": "en-*"}}, {"locale": "fr-FR"})
    assert holds({"age": {"gte": 13, "lt": 18}}, {"age": 13})
    assert not holds({"age": {"gte": 13, "lt": 18}}, {"age": 18})
    assert holds({"score": {"gt": 0.5}}, {"score": 0.75})
    assert not holds({"age": {"lt": 13}}, {"age": "9"})  # text is not a number
    assert not holds({"age": 13}, {"age": "13"})
    assert holds({"age": 13}, {"age": 13.0})
    assert not holds({"member": 1}, {"member": True})  # booleans only equal booleans
    assert holds({"member": True}, {"member": True})
    assert holds({"user_id": {"exists": True}}, {"user_id": "u1"})
    assert holds({"user_id": {"exists": False}}, {"user_id": None})
    assert not holds({"channel": "kids"}, {})
    assert holds({"not": {"channel": "kids"}}, {})
    assert holds({"any": [{"a": 1}, {"b": 2}]}, {"b": 2})
    assert not holds({"all": [{"a": 1}, {"b": 2}]}, {"b": 2})
    assert holds({"channel": {"equals": "kids"}}, {"channel": "kids"})


def test_explain_gives_the_reason_and_the_skipped_rules() -> None:
    exp = RULES.explain({"channel": "kids", "age": 20})
    assert exp.decision.rule == "kids"
    assert exp.reason == "channel is 'kids'"
    assert exp.checks[0].rule == "kids-young"
    assert not exp.checks[0].matched
    assert exp.checks[0].reason == "age is 20, not below 13"
    none = RULES.explain({"channel": "web"})
    assert none.decision.rule is None
    assert "defaults" in none.reason
    assert len(none.checks) == len(RULES.rules)


def test_layers_parsing_and_resolution() -> None:
    assert LayerSelection.parse("all").resolve(4) == [0, 1, 2, 3]
    assert LayerSelection.parse([0, "4-6", 5]).resolve(8) == [0, 4, 5, 6]
    assert LayerSelection.parse("10-12").resolve(32) == [10, 11, 12]
    assert LayerSelection.parse(3).resolve(4) == [3]
    assert str(LayerSelection.parse([0, "4-6"])) == "0, 4-6"
    with pytest.raises(PolicyError, match="model has 8 layers"):
        LayerSelection.parse(["6-10"]).resolve(8)
    decision = policy("defaults:\n  layers: [0, '20-23']\n").evaluate({})
    with pytest.raises(PolicyError, match="layer 23"):
        decision.resolve_layers(16)
    assert decision.resolve_layers(24) == [0, 20, 21, 22, 23]


def test_vector_key_ignores_alpha_but_not_k_lambda_or_calibration() -> None:
    def key(body: str) -> str:
        return policy(body).vector_key()

    assert key("defaults:\n  alpha: 0.1\n") == key("defaults:\n  alpha: 0.7\n")
    assert key("defaults:\n  preset: strict\n") == key("defaults:\n  preset: permissive\n")
    assert key("") != key("defaults:\n  k: 5\n")
    assert key("") != key("defaults:\n  lambda: 0.5\n")
    other = HEAD.replace("cal/benign.jsonl", "cal/benign2.jsonl")
    assert policy("", head=other).vector_key() != key("")
    assert policy("", head=HEAD.replace("7", "8")).vector_key() == key("")  # version: no
    # Rules differing only in alpha share the defaults' vectors.
    assert len({d.vector_key() for d in RULES.possible_decisions()}) == 1


def test_vector_spec_for_the_guard_resolves_manifests(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD)
    from sarsteer_guard.policy import load_policy

    spec = load_policy(path).evaluate({}).vector_spec
    assert spec["harmful"] == tmp_path / "cal/harmful.jsonl"
    assert spec["benign"] == tmp_path / "cal/benign.jsonl"
    assert (spec["k"], spec["lam"]) == (10, 1.0)
    builtin = parse_policy('name: b\nversion: "1"\nmodel: m\ncalibration: {}\n').evaluate({})
    assert (builtin.vector_spec["harmful"], builtin.vector_spec["benign"]) == (
        DEFAULT_HARMFUL,
        DEFAULT_BENIGN,
    )
    assert builtin.turn_prompt == DEFAULT_PROMPT
    stored = parse_policy('name: b\nversion: "1"\nmodel: m\ncalibration: {vector_set: vs1}\n')
    assert stored.evaluate({}).vector_spec == {"k": 10, "lam": 1.0, "vector_set_id": "vs1"}


def test_alpha_zero_is_steering_off() -> None:
    d = policy("defaults:\n  alpha: 0\n").evaluate({})
    assert d.alpha == 0
    assert not d.steered


def test_model_pattern() -> None:
    assert RULES.applies_to("Qwen/Qwen2-Audio-7B-Instruct")
    assert not RULES.applies_to("mistralai/Voxtral-Mini-3B-2507")


def test_in_file_tests_pass_and_fail_with_reasons() -> None:
    p = policy(
        """\
rules:
  - name: kids
    when: {channel: kids}
    preset: strict
tests:
  - name: right
    context: {channel: kids}
    expect: {rule: kids, alpha: 0.2, mode: enforce, layers: all}
  - name: wrong
    context: {channel: web}
    expect: {rule: kids, alpha: 0.3, record: all}
  - context: {channel: web}
    expect: {rule: null, steered: true, lambda: 1.0}
"""
    )
    results = run_policy_tests(p)
    assert [r.passed for r in results] == [True, False, True]
    assert results[2].name == "test 3"
    assert results[1].failures == (
        "expected alpha 0.3, got 0.1",
        "expected record 'all', got 'refused'",
        "expected rule 'kids', got null (no rule matched; defaults)",
    )


def test_policy_and_decisions_are_immutable() -> None:
    from pydantic import ValidationError

    decision = RULES.evaluate({})
    with pytest.raises(AttributeError):
        decision.alpha = 1.0  # type: ignore[misc]  # frozen dataclass: the point of the test
    with pytest.raises(ValidationError):
        RULES.name = "other"  # type: ignore[misc]  # frozen model: the point of the test
