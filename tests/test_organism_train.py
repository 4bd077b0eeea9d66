"""The organism's data and training scripts keep working: a short run on a handful of clips.

Real espeak-ng clips, a real (tiny) training run through the shipped recipe, the checkpoint
written in the hub layout and loaded back through ``load_model`` like any checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from sarsteer_guard.manifest import load_manifest
from sarsteer_guard.models import load_model
from sarsteer_guard.models.base import Message
from sarsteer_guard.organism.data import VOICES, build_requests
from sarsteer_guard.organism.train import TrainConfig, save_checkpoint, train
from sarsteer_guard.synth.augment import sox_available
from sarsteer_guard.testing.speech import espeak_available

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not (espeak_available() and sox_available()), reason="espeak-ng and sox not installed"
)


def test_splits_are_disjoint_by_prompt_and_voice() -> None:
    requests = build_requests(0)
    by_split: dict[str, set[str]] = {}
    for request in requests:
        by_split.setdefault(request.split, set()).add(request.text)
    assert by_split["train"].isdisjoint(by_split["heldout"])
    assert by_split["validation"].isdisjoint(by_split["heldout"])
    assert by_split["train"].isdisjoint(by_split["validation"])
    voices = [set(v) for v in VOICES.values()]
    assert all(a.isdisjoint(b) for i, a in enumerate(voices) for b in voices[i + 1 :])
    assert len({r.text for r in requests if r.harmful}) >= 300
    assert len({r.text for r in requests if not r.harmful}) >= 300
    assert build_requests(0) == requests


@pytest.fixture(scope="module")
def mini_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("organism-data")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/organism/make_data.py"),
            "--out",
            str(out),
            "--limit",
            "4",
            "--no-progress",
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    return out


def test_make_data_writes_split_manifests(mini_data: Path) -> None:
    train_ids = {i.transcript for i in load_manifest(mini_data / "train" / "harmful.jsonl")}
    held = {i.transcript for i in load_manifest(mini_data / "heldout" / "harmful.jsonl")}
    assert len(train_ids) == 4
    assert train_ids.isdisjoint(held)
    assert len(load_manifest(mini_data / "calibration" / "benign.jsonl")) >= 1


def test_short_training_run_writes_a_loadable_hub_checkpoint(
    mini_data: Path, tmp_path: Path
) -> None:
    config = TrainConfig(data_dir=mini_data, steps=3, batch=4, warmup=1, log_every=1)
    model, processor, log = train(config)
    assert [entry["step"] for entry in log["steps"]] == [1, 2, 3]
    assert all(entry["lm_loss"] > 0 for entry in log["steps"])
    target = save_checkpoint(model, processor, log, tmp_path / "ckpt")
    with safe_open(str(target / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
    assert "language_model.lm_head.weight" in keys
    assert any(k.startswith("language_model.model.layers.3.") for k in keys)
    lm = load_model(str(target), device="cpu")
    assert lm.hidden_size == 64
    text = lm.model.config.text_config
    assert text.hidden_size // text.num_attention_heads == 64
    ids = lm.generate(lm.encode([[Message(role="user", text="Set a timer.")]]), max_new_tokens=3)
    assert ids.shape[0] == 1
