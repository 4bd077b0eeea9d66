"""``eval`` and ``sweep`` end to end on ``tiny-planted``, resumption after a real kill, bad input.

Data: the shipped spoken calibration set, split so the clips evaluated are never the
clips the vectors were calibrated on (items 1-12 calibrate, items 13-20 are evaluated).
``tiny-planted`` has one constructed refusal direction, so steering flips every answer,
harmful and benign alike: these tests check the machinery, not a safety claim.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sarsteer_guard.cli import main
from sarsteer_guard.defaults import CALIBRATION_DIR

MARKUP = "<script>alert(1)</script>"


def subset(kind: str, start: int, stop: int, out: Path, *, tag: bool = False) -> Path:
    rows = [
        json.loads(line)
        for line in (CALIBRATION_DIR / f"{kind}.jsonl").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ][start:stop]
    lines = []
    for i, row in enumerate(rows):
        row["audio"] = str(CALIBRATION_DIR / row["audio"])
        row["category"] = ("violence" if i % 2 else "fraud") if kind == "harmful" else "everyday"
        if tag and i == 0:
            row["transcript"] = f"{row['transcript']} {MARKUP}"
        lines.append(json.dumps(row))
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaldata")
    return {
        "cal_h": subset("harmful", 0, 12, root / "cal_harmful.jsonl"),
        "cal_b": subset("benign", 0, 12, root / "cal_benign.jsonl"),
        "harmful": subset("harmful", 12, 20, root / "harmful.jsonl"),
        "benign": subset("benign", 12, 20, root / "benign.jsonl", tag=True),
        "store": root / "store",
        "root": root,
    }


def base_args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--model",
        "tiny-planted",
        "--harmful",
        str(data["harmful"]),
        "--benign",
        str(data["benign"]),
        "--store",
        str(data["store"]),
        "--out",
        str(out),
        "--max-new-tokens",
        "12",
        "--no-progress",
        *extra,
    ]


def calibration(data: dict[str, Path]) -> list[str]:
    return ["--calibration-harmful", str(data["cal_h"]), "--calibration-benign", str(data["cal_b"])]


def records(path: Path, kind: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["type"] == kind:
            out.append(record)
    return out


def test_eval_measures_both_arms_and_writes_reports(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(base_args(data, out, *calibration(data), "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    off, on = summary["unsteered"], summary["steered"]
    assert (off["asr"], off["brr"], on["asr"], on["brr"]) == (1.0, 1.0, 0.0, 0.0)
    assert (on["n_harmful"], on["n_benign"]) == (8, 8)
    assert on["asr_by_category"]["fraud"]["n"] == 4
    assert on["asr_by_category"]["violence"]["rate"] == 0.0
    assert on["brr_by_category"]["everyday"]["answered"] == 0
    assert on["asr_detail"]["ci95"] == [0.0, 0.3244]
    assert summary["steering_applied"] == [
        {"rule": "eval-steered", "alpha": 0.1, "steered": True, "turns": 16}
    ]
    assert summary["calibration_overlap"] == 0
    assert "greedy decoding, up to 12 new tokens" in summary["generation"]
    assert json.loads((out / "summary.json").read_text()) == summary

    page = (out / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page
    assert "Content-Security-Policy" in page
    report = (out / "report.md").read_text()
    assert "| Attack success rate (harmful answered; lower is better) | 100.0%" in report
    assert "tiny-planted is a built-in test model" in report
    assert MARKUP not in report

    turns = records(out / "results.jsonl", "turn")
    assert len(turns) == 32
    steered = [t for t in turns if t["arm"] == "steered"]
    assert all(t["text"].startswith("I cannot assist") and t["steered"] for t in steered)

    # Another judge re-scores the stored responses; nothing is generated again.
    assert (
        main(base_args(data, out, *calibration(data), "--json", "--judge", "reference-strings"))
        == 0
    )
    again = json.loads(capsys.readouterr().out)
    assert again["judge"] == "reference-strings"
    assert (again["unsteered"]["asr"], again["steered"]["asr"]) == (1.0, 0.0)
    assert len(records(out / "results.jsonl", "turn")) == 32
    assert Counter(v["judge"] for v in records(out / "results.jsonl", "verdict")) == {
        "detector": 32,
        "reference-strings": 32,
    }


def test_eval_of_a_policy_and_context_judges_the_models_own_words(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "kids.yaml"
    policy.write_text(
        textwrap.dedent(f"""
        name: kids
        version: "3"
        model: "*"
        calibration:
          harmful: {data["cal_h"]}
          benign: {data["cal_b"]}
        defaults: {{alpha: 0}}
        refusal: {{message: "Let's talk about something else!"}}
        mode: shadow
        rules:
          - name: kids-channel
            when: {{channel: kids}}
            alpha: 0.2
    """)
    )
    out = tmp_path / "policy-run"
    args = [
        "eval",
        "--model",
        "tiny-planted",
        "--harmful",
        str(data["harmful"]),
        "--benign",
        str(data["benign"]),
        "--store",
        str(data["store"]),
        "--out",
        str(out),
        "--max-new-tokens",
        "12",
        "--no-progress",
        "--policy",
        str(policy),
        "--context",
        "channel=kids",
        "--json",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steered"]["asr"] == 0.0
    assert summary["unsteered"]["asr"] == 1.0
    assert summary["steering_applied"] == [
        {"rule": "kids-channel", "alpha": 0.2, "steered": True, "turns": 16}
    ]
    assert summary["under_test"]["context"] == {"channel": "kids"}
    texts = {t["text"] for t in records(out / "results.jsonl", "turn") if t["arm"] == "steered"}
    assert texts == {"I cannot assist with that."}  # not the fixed message: the model's words
    assert "policy kids@3 for channel=kids" in (out / "report.md").read_text()


def test_a_context_the_policy_does_not_steer_is_reported_as_unsteered(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "off.yaml"
    policy.write_text(
        'name: off\nversion: "1"\nmodel: "*"\ncalibration: {}\ndefaults: {alpha: 0}\n'
    )
    out = tmp_path / "off-run"
    args = [
        "eval",
        "--model",
        "tiny-planted",
        "--harmful",
        str(data["harmful"]),
        "--store",
        str(data["store"]),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        "--no-progress",
        "--policy",
        str(policy),
        "--json",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["steered"]["asr"] == summary["unsteered"]["asr"] == 1.0
    assert summary["steering_applied"] == [
        {"rule": None, "alpha": 0.0, "steered": False, "turns": 8}
    ]
    assert "does not steer (alpha 0)" in captured.err
    assert "steered no turn" in (out / "report.md").read_text()


def test_a_killed_run_resumes_without_redoing_items(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = base_args(data, out, *calibration(data))
    command = [sys.executable, "-m", "sarsteer_guard", *args, "--concurrency", "1"]
    env = {**os.environ, "SARSTEER_LOG_LEVEL": "ERROR"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    results = out / "results.jsonl"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if results.exists() and results.read_text().count('"type": "turn"') >= 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    done_before = {(r["arm"], r["item"]) for r in records(results, "turn")}
    assert 3 <= len(done_before) < 32
    assert main(args) == 0  # the same command (at the default concurrency) resumes
    turns = records(results, "turn")
    keys = Counter((r["arm"], r["item"]) for r in turns)
    assert len(keys) == 32
    assert set(keys.values()) == {1}  # every item generated exactly once, across both runs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steered"]["n_harmful"] == 8


def test_sweep_writes_csv_picture_and_a_recommendation_that_lints(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--model",
        "tiny-planted",
        "--harmful",
        str(data["harmful"]),
        "--benign",
        str(data["benign"]),
        *calibration(data),
        "--store",
        str(data["store"]),
        "--out",
        str(out),
        "--alpha",
        "0.01,0.2",
        "--lambda",
        "1",
        "--k",
        "4",
        "--max-new-tokens",
        "8",
        "--no-progress",
        "--context",
        "channel=kids",
        "--json",
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tuned_on"] == "validation"
    assert result["target_met"] is True
    with (out / "sweep.csv").open() as handle:
        rows = {r["setting"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"unsteered", "s01", "s02", "s03"}
    labels = {(r["alpha"], r["lambda"], r["k"]) for r in rows.values()}
    assert labels == {("0", "", ""), ("0.01", "1", "4"), ("0.2", "1", "4"), ("0.1", "1", "10")}
    by_alpha = {r["alpha"]: r for r in rows.values()}
    assert float(by_alpha["0"]["asr"]) == 1.0
    assert float(by_alpha["0.2"]["asr"]) == 0.0
    assert by_alpha["0.1"]["paper_default"] == "1"
    recommended = [r for r in rows.values() if r["recommended"] == "1"]
    assert len(recommended) == 1
    assert float(recommended[0]["asr"]) <= 0.05
    assert result["recommended"]["alpha"] == float(recommended[0]["alpha"])
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "recommendation.yaml").read_text()
    assert "Tuned on VALIDATION data" in text
    assert "refuses many benign requests" in text  # tiny-planted refuses everything once steered
    assert main(["policy", "lint", "--strict", str(out / "recommendation.yaml")]) == 0
    assert main(["policy", "test", str(out / "recommendation.yaml")]) == 0
    assert "recommended" in (out / "sweep.md").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--generation", "checkpoint"], "has no sampling option yet"),
        (["--policy", "p.yaml", "--alpha", "0.2"], "--alpha and --policy both say"),
        (["--context", "a=b"], "--context applies to --policy"),
        (["--alpha", "20"], "--alpha must be between 0 and 10"),
        (["--judge", "endpoint"], "--judge endpoint needs --judge-url"),
        (["--engine", "no-such-engine"], "unknown engine 'no-such-engine'"),
    ],
)
def test_bad_options_are_one_line_errors(
    data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    assert main(base_args(data, tmp_path / "bad", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0]
    assert err[0].startswith("sarsteer-guard: error:")


def test_eval_needs_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", "tiny-planted", "--out", str(tmp_path)]) == 2
    assert "give --harmful and/or --benign" in capsys.readouterr().err


def test_items_with_their_own_prompts_are_sent_with_them(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [json.loads(line) for line in data["benign"].read_text().splitlines()][:3]
    rows[0]["text"] = rows[1]["text"] = "What is asked in this clip?"
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "prompts"
    args = [
        "eval",
        "--model",
        "tiny-planted",
        "--benign",
        str(questions),
        *calibration(data),
        "--store",
        str(data["store"]),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        "--no-progress",
        "--prompt",
        "Answer the request.",
    ]
    assert main(args) == 0
    capsys.readouterr()
    prompts = {(r["arm"], r["item"]): r["prompt"] for r in records(out / "results.jsonl", "turn")}
    assert len(prompts) == 6
    for arm in ("unsteered", "steered"):
        assert prompts[(arm, f"benign:{rows[0]['id']}")] == "What is asked in this clip?"
        assert prompts[(arm, f"benign:{rows[1]['id']}")] == "What is asked in this clip?"
        assert prompts[(arm, f"benign:{rows[2]['id']}")] == "Answer the request."
