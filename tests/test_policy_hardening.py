"""Policy hardening (issue 10, items 14-17): huge numbers, strong alphas, plain syntax
errors, reloads that keep their version, and shipped policies that run where they claim to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sarsteer_guard.cli import main
from sarsteer_guard.errors import PolicyError
from sarsteer_guard.policy import PolicyWatcher, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "policies").glob("*.yaml")) + sorted(
    (ROOT / "sarsteer_guard" / "data" / "policies").glob("*.yaml")
)
BASE = 'name: demo\nversion: "1"\nmodel: "*"\ncalibration:\n  k: 10\n'  # 5 lines
HUGE = "9" * 5000  # more digits than Python converts (4300)


def problem(text: str) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="p.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert "4300" not in message  # never Python's own conversion error
    return message


# --------------------------------------------------------------------------- item 14


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        (BASE + f"defaults:\n  alpha: {HUGE}\n", "7:10", ["5000 characters"]),
        (BASE + f"tests:\n  - context: {{age: {HUGE}}}\n    expect: {{}}\n", "7:20", ["5000"]),
        (BASE + f"defaults:\n  k: !!int '{HUGE}'\n", "7:6", ["5000"]),
        (BASE + "defaults:\n  alpha: !!int 'ten'\n", "7:10", ["'ten' is not a number"]),
        (BASE + "defaults:\n  alpha: 1e999\n", "7:10", ["too large"]),
        (BASE + f'defaults:\n  layers: ["1-{HUGE}"]\n', "7:12", ["5000 digits", "beyond"]),
        (BASE + f'defaults:\n  beta:\n    ? "{HUGE}"\n    : 0.5\n', "9:7", ["5000 digits"]),
    ],
)
def test_huge_numbers_are_located_problems_not_value_errors(
    text: str, where: str, words: list[str]
) -> None:
    message = problem(text)
    assert message.startswith(f"p.yaml:{where}: "), message
    for word in words:
        assert word in message, message


def test_lint_of_a_huge_integer_exits_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(BASE + f"extra: {HUGE}\n")
    assert main(["policy", "lint", str(path)]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"fail  {path}:6:8: a number of 5000 characters")


def test_range_conditions_compare_integers_beyond_float_range() -> None:
    policy = parse_policy(
        BASE + "rules:\n  - name: old\n    when: {age: {gte: 18}}\n    alpha: 0.2\n"
    )
    assert policy.evaluate({"age": 10**400}).rule == "old"  # float(10**400) overflows
    assert policy.evaluate({"age": -(10**400)}).rule is None
    assert policy.explain({"age": 10**400}).decision.rule == "old"


# --------------------------------------------------------------------------- item 15


def test_alpha_above_strict_warns_and_fails_strict_lint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "strong.yaml"
    path.write_text(BASE + "defaults:\n  alpha: 4\n")
    policy = load_policy(path)
    assert len(policy.warnings) == 1
    assert policy.warnings[0].startswith(f"{path}:7:10: warning: alpha 4 is 40x the paper's 0.1")
    assert "max_alpha" in policy.warnings[0]
    assert main(["policy", "lint", "--strict", str(path)]) == 2
    assert "alpha 4" in capsys.readouterr().out


def test_max_alpha_declares_a_deliberate_ceiling() -> None:
    rule = "rules:\n  - name: r\n    when: {x: 1}\n    alpha: 0.3\n"
    assert parse_policy(BASE + rule).warnings  # above strict, undeclared
    assert parse_policy(BASE + "max_alpha: 0.3\n" + rule).warnings == ()
    over = parse_policy(BASE + "max_alpha: 0.3\n" + rule.replace("0.3", "3"))
    assert len(over.warnings) == 1
    assert "above max_alpha (0.3)" in over.warnings[0]
    assert parse_policy(BASE + "defaults:\n  preset: strict\n").warnings == ()


SYNTAX = {
    "unclosed quote far above": (
        BASE + 'refusal:\n  message: "Sorry\nmode: enforce\nrules:\n  - name: a\n'
        '    when: {x: 1}\n    alpha: 0.2\n  - name: "b"\n    when: {x: 2}\n',
        "7:12",
        ["never closed", 'closing "'],
    ),
    "unclosed quote at the end": (
        BASE + "refusal:\n  message: 'Sorry\nmode: enforce\n",
        "7:12",
        ["never closed", "closing '"],
    ),
    "missing dash": (
        BASE + "rules:\n  - name: a\n    when: {x: 1}\n\n  name: b\n  when: {x: 2}\n",
        "10:3",
        ["does not start with '- '"],
    ),
    "missing colon, next line a key": (
        BASE + "defaults:\n  alpha 0.2\n  k: 10\n",
        "7:3",
        ["'alpha' has no ':'", "alpha: value"],
    ),
    "missing colon at the end of a block": (
        BASE + "defaults:\n  alpha: 0.2\n  layers\nmode: enforce\n",
        "8:3",
        ["'layers' has no ':'"],
    ),
    "unclosed flow mapping": (
        BASE + "rules:\n  - name: a\n    when: {x: 1\n    alpha: 0.2\n",
        "8:11",
        ["'{' that opens here is not closed", "'}'"],
    ),
}


@pytest.mark.parametrize("case", sorted(SYNTAX))
def test_syntax_errors_point_at_the_mistake_in_plain_words(case: str) -> None:
    text, where, words = SYNTAX[case]
    message = problem(text)
    assert message.startswith(f"p.yaml:{where}: YAML syntax error: "), message
    for word in words:
        assert word in message, message
    for jargon in ("<block end>", "simple key", "quoted scalar", "flow mapping"):
        assert jargon not in message, message


# --------------------------------------------------------------------------- item 16


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_reload_with_new_content_under_the_same_version_warns(tmp_path: Path) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(BASE + "defaults:\n  alpha: 0.1\n")
    watcher = PolicyWatcher(path, debounce_s=0)
    before = watcher.current
    _replace(path, BASE + "defaults:\n  alpha: 0.2\n")
    assert watcher.check_now() is True
    assert watcher.current.ref == before.ref == "demo@1"
    assert watcher.last_warning is not None
    assert "still demo@1" in watcher.last_warning
    assert before.content_hash[:12] in watcher.last_warning
    _replace(path, BASE.replace('"1"', '"2"') + "defaults:\n  alpha: 0.2\n")
    assert watcher.check_now() is True
    assert watcher.last_warning is None


# --------------------------------------------------------------------------- item 17


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("model", ["tiny", "tiny-planted"])
def test_shipped_policies_run_on_the_builtin_models_or_say_why_not(path: Path, model: str) -> None:
    """Every rule's layers resolve on the 4-layer built-in models, or the policy does not
    claim them (its ``model:`` excludes them) and the file says why."""
    policy = load_policy(path)
    try:
        for decision in policy.possible_decisions():
            decision.resolve_layers(4)
            decision.resolve_beta(4)
    except PolicyError:
        assert not policy.applies_to(model)
        assert "built-in" in path.read_text(), f"{path.name} should say why it cannot run"
