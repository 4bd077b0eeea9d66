"""The CLI's main commands: calibrate -> respond, and one clear line for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sarsteer_guard.calibration import Activations
from sarsteer_guard.cli import main
from sarsteer_guard.defaults import CALIBRATION_DIR
from sarsteer_guard.steering import SteeringVectors

CLIP = CALIBRATION_DIR / "audio" / "harmful_005.flac"


@pytest.fixture(scope="module")
def vectors_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("cli")
    vectors, acts = out / "v.safetensors", out / "a.safetensors"
    code = main(
        [
            "calibrate",
            "--model",
            "tiny",
            "--limit",
            "12",
            "--k",
            "4",
            "--batch-size",
            "6",
            "--out",
            str(vectors),
            "--save-activations",
            str(acts),
            "--no-progress",
        ]
    )
    assert code == 0
    return vectors, acts


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("sarsteer-guard: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in "\n".join(err)
    return lines[0]


def test_calibrate_writes_vectors_and_activations(
    vectors_file: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    vectors_path, acts_path = vectors_file
    vectors = SteeringVectors.load(vectors_path)
    assert vectors.vectors.shape == (4, 64)
    assert (vectors.meta.k, vectors.meta.n_harmful, vectors.meta.n_benign) == (4, 12, 12)
    assert vectors.meta.refusal_instruction == "I cannot assist with that."
    acts = Activations.load(acts_path)
    assert acts.harmful_base.shape == acts.benign_refusal.shape == (12, 4, 64)
    assert acts.harmful_base.dtype == torch.float32


def test_respond_json_with_vectors(
    vectors_file: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    args = ["respond", "--model", "tiny", "--audio", str(CLIP), "--vectors", str(vectors_file[0])]
    args += ["--alpha", "0.1", "--max-new-tokens", "5", "--json", "--store", str(tmp_path / "s")]
    args += ["--audit", f"sqlite:///{tmp_path / 'audit.db'}"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("text", "alpha", "steered", "refused", "latency_ms", "tokens"):
        assert key in result
    assert result["steered"] is True
    assert result["alpha"] == 0.1
    assert 0 < result["tokens"] <= 5


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "not found"),
        (b"", "empty"),
        (b"this is not audio at all" * 10, "not a readable audio file"),
    ],
)
def test_bad_audio_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, expected: str
) -> None:
    path = tmp_path / "q.wav"
    if content is not None:
        path.write_bytes(content)
    assert main(["respond", "--model", "tiny", "--audio", str(path)]) == 2
    assert expected in error_line(capsys)


def test_vectors_for_another_model_are_refused(
    vectors_file: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["respond", "--model", "tiny-planted", "--audio", str(CLIP)]
    code = main([*args, "--vectors", str(vectors_file[0])])
    assert code == 2
    assert "fingerprint" in error_line(capsys)


def test_unsupported_model_class_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16,
    )  # fmt: skip
    BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
    assert main(["respond", "--model", str(tmp_path / "bert"), "--audio", str(CLIP)]) == 2
    assert "Bert" in error_line(capsys)


def test_bad_manifest_line_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "harmful.jsonl"
    manifest.write_text(f'{{"audio": "{CLIP}"}}\n{{"audio": 3}}\n')
    code = main(["calibrate", "--harmful", str(manifest), "--out", str(tmp_path / "v")])
    assert code == 2
    assert f"{manifest}:2" in error_line(capsys)


def test_error_exit_code_and_no_traceback_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sarsteer_guard", "segment", str(tmp_path / "missing.wav")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_demo_json_shows_steering_flip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--model", "tiny-planted", "--out", str(tmp_path / "demo"), "--clips", "1"]
    assert main([*argv, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [row["kind"] for row in rows] == ["harmful", "benign"]
    for row in rows:
        assert row["unsteered"] == "Sure, here are the steps."
        assert row["steered"] == "I cannot assist with that."
        assert row["refused_steered"]
        assert not row["refused_unsteered"]


# -- issue 10, item 24: an unwritable --out fails first, in one line ------------------
@pytest.mark.parametrize("flag", ["--out", "--save-activations", "--plot"])
@pytest.mark.parametrize("where", ["under-a-file", "a-folder"])
def test_calibrate_unwritable_output_fails_before_any_model_work(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flag: str,
    where: str,
) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was opened before the output path was checked")

    monkeypatch.setattr("sarsteer_guard.backends.open_backend", no_model)
    (tmp_path / "file").write_text("x")
    bad = tmp_path / "file" / "v.safetensors" if where == "under-a-file" else tmp_path
    args = ["calibrate", "--out", str(tmp_path / "v.safetensors"), flag, str(bad)]
    assert main(args) == 2
    line = error_line(capsys)
    assert f"cannot write {flag} {bad}" in line
    assert "choose a writable path" in line
    assert not (tmp_path / "v.safetensors").exists()


def test_calibrate_unwritable_out_in_a_real_process_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "v.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "sarsteer_guard", "calibrate", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"sarsteer-guard: error: cannot write --out {out} ({out.parent} is a file, not a folder): "
        "choose a writable path"
    ]


@pytest.mark.parametrize("command", ["eval", "sweep", "dataset"])
def test_eval_sweep_dataset_unwritable_out_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    def no_items(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr("sarsteer_guard.evaluation.evaluate.load_items", no_items)
    monkeypatch.setattr("sarsteer_guard.evaluation.datasets.read_dataset", no_items)
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "results"
    harmful = str(CALIBRATION_DIR / "harmful.jsonl")
    args = {
        "eval": ["eval", "--harmful", harmful, "--out", str(out)],
        "sweep": ["sweep", "--harmful", harmful, "--out", str(out)],
        "dataset": ["dataset", "sorry-bench", harmful, "--out", str(out)],
    }[command]
    assert main(args) == 2
    assert f"cannot write --out {out} ({out.parent} is a file, not a folder)" in error_line(capsys)
