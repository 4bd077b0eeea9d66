"""Policy validation: every problem is refused as file:line:column: sentence, all or nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sarsteer_guard.cli import main
from sarsteer_guard.errors import PolicyError
from sarsteer_guard.policy import PolicyLoadError, load_policy, parse_policy

BASE = """\
name: demo
version: "1"
model: "Qwen/Qwen2-Audio-*"
calibration:
  harmful: cal/harmful.jsonl
  benign: cal/benign.jsonl
"""


def problem(text: str) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="p.yaml")
    return str(info.value)


# Each case: YAML, the expected line:column, and words the sentence must contain.
CASES = {
    "unknown key": (BASE + "defaults:\n  alpah: 0.2\n", "8:3", ["unknown key 'alpah'", "alpha"]),
    "wrong type": (BASE + "defaults:\n  alpha: high\n", "8:10", ["alpha", "number", "high"]),
    "alpha too big": (BASE + "defaults:\n  alpha: 50\n", "8:10", ["alpha", "at most 10"]),
    "lambda above 1": (BASE + "defaults:\n  lambda: 2\n", "8:11", ["lambda", "at most 1"]),
    "negative k": (BASE + "defaults:\n  k: -1\n", "8:6", ["k", "at least 0"]),
    "fractional k": (BASE + "defaults:\n  k: 2.5\n", "8:6", ["whole number"]),
    "bad mode": (BASE + "mode: enforcing\n", "7:7", ["'enforce'", "'shadow'"]),
    "retention zero": (BASE + "audit:\n  retention_days: 0\n", "8:19", ["at least 1"]),
    "duplicate rule": (
        BASE + "rules:\n  - name: a\n    when: {x: 1}\n  - name: a\n    when: {x: 2}\n",
        "10:11",
        ["two rules are named 'a'"],
    ),
    "unknown operator": (
        BASE + "rules:\n  - name: a\n    when:\n      age: {lower: 13}\n",
        "10:13",
        ["unknown operator 'lower'"],
    ),
    "nested bad in": (
        BASE + "rules:\n  - name: a\n    when:\n      any:\n        - {x: 1}\n"
        "        - {tier: {in: free}}\n",
        "12:23",
        ["'in' needs a non-empty list"],
    ),
    "missing key": ("name: demo\nversion: '1'\nmodel: m\n", "1:1", ["calibration is required"]),
    "vector set and manifests": (BASE + "  vector_set: abc\n", "5:3", ["either vector_set"]),
    "backwards range": (BASE + "defaults:\n  layers: [1, '20-10']\n", "8:15", ["backwards"]),
    "overlapping beta": (BASE + "defaults:\n  beta: {'3-5': 1, 4: 2}\n", "8:20", ["layer 4"]),
    "unknown test rule": (
        BASE + "tests:\n  - context: {a: 1}\n    expect: {rule: nope}\n",
        "9:20",
        ["expects rule 'nope'"],
    ),
    "list at top": ("- a\n- b\n", "1:1", ["a policy is a mapping"]),
    "float version": (BASE.replace('"1"', "1.10"), "2:10", ["quotes"]),
    "bad name": (BASE.replace("name: demo", "name: 'my policy!'"), "1:7", ["not a usable name"]),
    "empty when": (BASE + "rules:\n  - name: a\n    when: {}\n", "9:11", ["match every turn"]),
    "hashed and dropped": (
        BASE + "audit:\n  hash_fields: [user_id]\n  drop_fields: [phone, user_id]\n",
        "9:24",
        ["both hash_fields and drop_fields"],
    ),
    "null context value": (
        BASE + "tests:\n  - context: {a: null}\n    expect: {rule: null}\n",
        "8:18",
        ["text, a number or true/false"],
    ),
    "k in two places": (BASE + "  k: 5\ndefaults:\n  k: 6\n", "9:6", ["set it in one place"]),
    "yaml syntax": (BASE + "defaults:\n  alpha: 0.1\n   k: 3\n", "9:5", ["YAML syntax error"]),
    "tabs": (BASE + "defaults:\n\talpha: 0.1\n", "8:1", ["tab"]),
    "duplicate key": (BASE + "mode: enforce\nmode: shadow\n", "8:1", ["appears twice"]),
    "object tag": (BASE + "system_prompt: !!python/object/apply:os.system [ls]\n", "7:16", ["tag"]),
    "complex key": (BASE + "? [a, b]\n: 1\n", "7:3", ["a key must be"]),
    "two documents": (BASE + "---\nname: other\n", "7:1", ["more than one YAML document"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_error_names_file_line_column_in_a_sentence(case: str) -> None:
    text, where, words = CASES[case]
    message = problem(text)
    assert message.startswith(f"p.yaml:{where}: "), message
    for word in words:
        assert word in message, message
    assert "Traceback" not in message
    assert "pydantic" not in message
    assert "\n" not in message


def test_all_problems_are_reported_in_file_order() -> None:
    text = BASE + "defaults:\n  alpha: 50\n  k: -2\nmode: nope\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="p.yaml")
    assert isinstance(info.value, PolicyLoadError)
    problems = info.value.problems
    assert [p.split(": ")[0] for p in problems] == ["p.yaml:8:10", "p.yaml:9:6", "p.yaml:10:7"]
    assert "(and 2 more problems)" in str(info.value)


def test_alias_bomb_is_refused_fast() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    bomb = BASE + "\n".join(lines) + "\n"
    # 9**10 strings if expanded; refused at the first alias, before anything is built.
    message = problem(bomb)
    assert "aliases" in message
    assert message.startswith("p.yaml:8:")


def test_any_alias_is_refused_even_a_small_one() -> None:
    assert "aliases" in problem(BASE + "refusal:\n  message: &m hi\nsystem_prompt: *m\n")


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(BASE + "description: '" + "x" * (2 << 20) + "'\n")
    with pytest.raises(PolicyError, match=r"huge\.yaml:1:1: the file is larger than 1024 KiB"):
        load_policy(path)


def test_flat_flood_of_values_is_refused() -> None:
    assert "more than" in problem(BASE + "rules: [" + "1," * 100_000 + "1]\n")


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    assert "nested more than" in problem(BASE + "description: " + "[" * 5000 + "]" * 5000 + "\n")


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy(tmp_path / "absent.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(BASE.encode() + b"description: caf\xe9\n")
    with pytest.raises(PolicyError, match=r"latin1\.yaml:7:17: the file is not UTF-8"):
        load_policy(bad)


def test_yaml_1_1_booleans_stay_text() -> None:
    policy = parse_policy(
        BASE + "rules:\n  - name: norway\n    when: {country: no, beta_user: yes}\n    alpha: 0.2\n"
    )
    assert policy.evaluate({"country": "no", "beta_user": "yes"}).rule == "norway"
    assert policy.evaluate({"country": False, "beta_user": True}).rule is None


def test_cli_prints_one_line_and_exits_2_for_each_error_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i, case in enumerate(sorted(CASES)):
        path = tmp_path / f"case{i}.yaml"
        path.write_text(CASES[case][0])
        code = main(["policy", "explain", str(path), "--context", "channel=kids"])
        captured = capsys.readouterr()
        assert code == 2, case
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, (case, captured.err)
        assert re.match(rf"sarsteer-guard: error: {re.escape(str(path))}:\d+:\d+: ", lines[0])
        assert "Traceback" not in captured.err
        assert captured.out == ""
