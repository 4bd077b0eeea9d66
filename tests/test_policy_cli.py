"""The `policy` CLI, the shipped policies, the JSON Schema, and the no-torch guarantee."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sarsteer_guard.cli import main
from sarsteer_guard.cli._common import parse_context_value
from sarsteer_guard.policy import load_policy, policy_json_schema, run_policy_tests

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "policies").glob("*.yaml"))


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_three_policies_are_shipped() -> None:
    assert {p.name for p in SHIPPED} >= {"default.yaml", "kids-channel.yaml", "red-team.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_lint_clean_and_pass_their_tests(path: Path) -> None:
    policy = load_policy(path)
    assert policy.warnings == ()
    results = run_policy_tests(policy)
    assert len(results) >= 3
    assert [r.failures for r in results if not r.passed] == []


def test_shipped_default_is_balanced_fail_closed_refused_only() -> None:
    d = load_policy(ROOT / "policies" / "default.yaml").evaluate({"channel": "anything"})
    assert (d.alpha, d.lam, d.k, d.preset) == (0.1, 1.0, 10, "balanced")
    assert d.failure_mode == "fail_closed"
    assert (d.audit.record, d.audit.keep_audio, d.audit.retention_days) == ("refused", False, 183)


def test_shipped_red_team_never_steers_by_default_and_records_everything() -> None:
    p = load_policy(ROOT / "policies" / "red-team.yaml")
    d = p.evaluate({})
    assert not d.steered
    assert d.audit.record == "all"
    assert any(r.mode == "shadow" for r in p.rules)


def test_lint_ok_and_fail_lines_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["policy", "lint", *map(str, SHIPPED)], capsys)
    assert code == 0
    assert all(line.startswith("ok    ") for line in out.splitlines())
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: '1'\nmodel: m\ncalibration: {}\nmode: on\nalpha: 1\n")
    code, out, err = run(["policy", "lint", str(SHIPPED[0]), str(bad)], capsys)
    assert code == 2
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith("ok    ")
    assert lines[1] == (
        f"fail  {bad}:5:7: mode must be one of 'enforce' or 'shadow', not the text 'on'"
    )
    assert lines[2].startswith(f"fail  {bad}:6:1: unknown key 'alpha'")


def test_lint_strict_turns_warnings_into_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "short.yaml"
    path.write_text(
        "name: x\nversion: '1'\nmodel: m\ncalibration: {}\naudit: {retention_days: 30}\n"
    )
    code, out, _ = run(["policy", "lint", str(path)], capsys)
    assert code == 0
    assert "warning: retention_days is 30" in out
    code, _, _ = run(["policy", "lint", "--strict", str(path)], capsys)
    assert code == 2


def test_explain_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    kids = str(ROOT / "policies" / "kids-channel.yaml")
    code, out, _ = run(["policy", "explain", kids, "-c", "channel=kids", "-c", "age=9"], capsys)
    assert code == 0
    assert "rule      kids-under-13 (rule 1 of 5)" in out
    assert "why       channel is 'kids' and age is 9, below 13" in out
    assert "alpha 0.3" in out
    code, out, _ = run(
        ["policy", "explain", kids, "--context", "channel=kids", "--context", "age=15", "--json"],
        capsys,
    )
    data = json.loads(out)
    assert data["rule"] == "kids-teens"
    assert data["context"] == {"channel": "kids", "age": 15}
    assert data["steering"]["alpha"] == 0.2
    assert data["steering"]["preset"] == "strict"
    assert data["checked"][0] == {
        "rule": "kids-under-13",
        "matched": False,
        "reason": "age is 15, not below 13",
    }
    assert len(data["vector_key"]) == 32


def test_explain_rejects_a_context_without_equals(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["policy", "explain", str(SHIPPED[0]), "--context", "channel"])
    assert info.value.code == 2
    assert "is not key=value" in capsys.readouterr().err


def test_context_values_are_typed() -> None:
    assert parse_context_value("13") == 13
    assert parse_context_value("-2") == -2
    assert parse_context_value("0.5") == 0.5
    assert parse_context_value("1e3") == 1000.0
    assert parse_context_value("TRUE") is True
    assert parse_context_value("false") is False
    assert parse_context_value("kids") == "kids"
    assert parse_context_value('"02139"') == "02139"
    assert parse_context_value("en-GB") == "en-GB"
    assert parse_context_value("") == ""


def test_policy_test_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["policy", "test", *map(str, SHIPPED)], capsys)
    assert code == 0
    assert "fail" not in out
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        "name: x\nversion: '1'\nmodel: m\ncalibration: {}\n"
        "tests:\n  - name: wants strict\n    context: {}\n    expect: {alpha: 0.2}\n"
    )
    code, out, _ = run(["policy", "test", str(failing)], capsys)
    assert code == 1
    assert f"fail  {failing}: wants strict: expected alpha 0.2, got 0.1" in out
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [\n")
    code, out, _ = run(["policy", "test", str(broken)], capsys)
    assert code == 2
    assert out.startswith(f"fail  {broken}:")


def test_schema_is_json_schema_for_editors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["policy", "schema"], capsys)
    assert code == 0
    schema = json.loads(out)
    assert schema == json.loads(json.dumps(policy_json_schema()))
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert {"name", "version", "model", "calibration", "rules", "tests"} <= set(
        schema["properties"]
    )
    assert set(schema["required"]) == {"name", "version", "model", "calibration"}
    steering = schema["$defs"]["Steering"]["properties"]
    assert "lambda" in steering
    assert "lam" not in steering
    assert schema["$defs"]["Rule"]["properties"]["when"]["type"] == "object"
    target = tmp_path / "policy.schema.json"
    assert run(["policy", "schema", "-o", str(target)], capsys)[0] == 0
    assert json.loads(target.read_text()) == schema


def test_policy_package_and_cli_never_import_torch(tmp_path: Path) -> None:
    script = f"""
import sys
from sarsteer_guard.cli import policy as cli_policy
from sarsteer_guard.policy import PolicyWatcher, load_policy, run_policy_tests
p = load_policy({str(ROOT / "policies" / "kids-channel.yaml")!r})
p.evaluate({{"channel": "kids", "age": 9}}).resolve_layers(32)
run_policy_tests(p)
with PolicyWatcher({str(ROOT / "policies" / "default.yaml")!r}, backend="poll") as w:
    w.current
heavy = sorted(m for m in ("torch", "transformers", "numpy") if m in sys.modules)
print(",".join(heavy) or "none")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert result.stdout.strip() == "none", result.stdout + result.stderr
