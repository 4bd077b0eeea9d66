"""The organism's data and training scripts keep working: a short run on a handful of clips.

Real espeak-ng clips, a real (tiny) training run through the shipped recipe, the checkpoint
written in the hub layout and loaded back through ``load_model`` like any checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors import safe_open

from sarsteer_guard.manifest import load_manifest
from sarsteer_guard.models import load_model
from sarsteer_guard.models.base import Message
from sarsteer_guard.organism.data import VOICES, build_requests
from sarsteer_guard.organism.train import TrainConfig, save_checkpoint, spec_augment, train
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


def tiny_config(data_dir: Path) -> TrainConfig:
    """A two-step run on ``data_dir`` (seconds on a CPU); tests vary it with ``replace``."""
    return TrainConfig(data_dir=data_dir, steps=2, batch=4, warmup=1, log_every=1, pretrain_batch=4)


def run_script(script: str, *args: str, timeout: int = 300) -> None:
    """Run ``scripts/organism/{script}`` from the repository root on one thread; fail loudly."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/organism" / script), *args],
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def mini_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("organism-data")
    run_script("make_data.py", "--out", str(out), "--limit", "4", "--no-progress")
    return out


def test_make_data_writes_split_manifests(mini_data: Path) -> None:
    train_ids = {i.transcript for i in load_manifest(mini_data / "train" / "harmful.jsonl")}
    held = {i.transcript for i in load_manifest(mini_data / "heldout" / "harmful.jsonl")}
    assert len(train_ids) == 4
    assert train_ids.isdisjoint(held)
    assert len(load_manifest(mini_data / "calibration" / "benign.jsonl")) >= 1


def test_fewer_training_renderings_are_a_prefix_of_more(mini_data: Path, tmp_path: Path) -> None:
    """Attempts 21-26: rendering i of a prompt is the same clip at any --train-variants."""
    run_script(
        "make_data.py",
        *("--out", str(tmp_path), "--limit", "4", "--train-variants", "2", "--no-progress"),
    )
    few = load_manifest(tmp_path / "train" / "benign.jsonl").items
    many = {item.id: item for item in load_manifest(mini_data / "train" / "benign.jsonl")}
    assert len(few) == 8
    assert len(many) == 4 * 16  # the default: sixteen renderings per training prompt
    for item in few:
        assert item.audio is not None
        twin = many[item.id].audio
        assert twin is not None
        assert item.audio.read_bytes() == twin.read_bytes(), item.id
    calibration = tmp_path / "calibration" / "benign.jsonl"
    assert calibration.read_text().replace(str(tmp_path), "") == (
        (mini_data / "calibration" / "benign.jsonl").read_text().replace(str(mini_data), "")
    )


def test_train_speeds_change_training_clips_only(mini_data: Path, tmp_path: Path) -> None:
    """``--train-speeds`` (attempt 35): validation and held-out stay byte for byte the same."""
    run_script(
        "make_data.py",
        *("--out", str(tmp_path), "--limit", "4", "--train-variants", "2", "--no-progress"),
        *("--train-speeds", "0.85,1.15"),
    )
    for split in ("validation", "heldout"):
        for item in load_manifest(tmp_path / split / "harmful.jsonl").items:
            assert item.audio is not None
            twin = mini_data / split / "audio" / item.audio.name
            assert item.audio.read_bytes() == twin.read_bytes(), item.id
    trained = load_manifest(tmp_path / "train" / "harmful.jsonl").items
    assert all(
        item.audio is not None
        and item.audio.read_bytes()
        != (mini_data / "train" / "audio" / item.audio.name).read_bytes()
        for item in trained
    )
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts/organism/make_data.py"), "--train-speeds", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "between 0.5 and 2" in bad.stderr


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


def test_attempt_options_train_and_load_with_a_wider_encoder(
    mini_data: Path, tmp_path: Path
) -> None:
    """The alignment loss, feature augmentation and a 128-wide encoder (attempts 8, 10, 12)."""
    config = replace(
        tiny_config(mini_data),
        pretrain_steps=1,
        align_weight=1.0,
        spec_augment=True,
        audio_width=128,
    )
    model, processor, log = train(config)
    assert all(0.0 < entry["align_loss"] <= 2.0 for entry in log["steps"])
    assert log["config"]["audio_width"] == 128
    target = save_checkpoint(model, processor, log, tmp_path / "wide")
    lm = load_model(str(target), device="cpu")
    audio = lm.model.config.audio_config
    assert audio.d_model == 128
    assert audio.d_model // audio.encoder_attention_heads == 64
    assert lm.hidden_size == 64


def test_spec_augment_is_seeded_and_keeps_the_silence_floor() -> None:
    torch = pytest.importorskip("torch")
    features = torch.rand(3, 128, 200) - 0.5
    before = features.clone()
    first = spec_augment(features, torch.Generator().manual_seed(7))
    again = spec_augment(features, torch.Generator().manual_seed(7))
    other = spec_augment(features, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == features.shape
    for row in range(3):
        assert first[row].min() >= features[row].min()  # masks fill with the row's floor
    assert torch.equal(features, before)  # the input is not modified
    assert (first != features).any()


def test_encoder_width_must_be_a_multiple_of_64() -> None:
    from sarsteer_guard.organism.model import build_tokenizer, organism_config

    tokenizer = build_tokenizer(["How do I set a timer?", "I cannot assist with that."])
    with pytest.raises(ValueError, match="multiple of 64"):
        organism_config(tokenizer, audio_width=100)
    assert organism_config(tokenizer, audio_width=192).audio_config.encoder_attention_heads == 3


def test_cached_pretraining_gives_the_same_weights_as_computing_it(
    mini_data: Path, tmp_path: Path
) -> None:
    """A second run with the same pre-training key loads it, and ends bit for bit the same."""
    torch = pytest.importorskip("torch")
    config = replace(tiny_config(mini_data), pretrain_steps=2)
    cache = tmp_path / "cache"
    plain, _, _ = train(config)
    first, _, first_log = train(replace(config, pretrain_cache=cache))
    assert len(list(cache.glob("pretrain-*.pt"))) == 1
    again, _, again_log = train(replace(config, pretrain_cache=cache))
    assert again_log["pretrain"] == first_log["pretrain"]
    for name, value in plain.state_dict().items():
        assert torch.equal(value, first.state_dict()[name]), name
        assert torch.equal(value, again.state_dict()[name]), name
    other, _, _ = train(replace(config, seed=1, pretrain_cache=cache))
    assert len(list(cache.glob("pretrain-*.pt"))) == 2  # another seed is another key
    assert not torch.equal(other.lm_head.weight, plain.lm_head.weight)


def test_slot_text_tasks_put_typed_requests_where_the_audio_goes(mini_data: Path) -> None:
    """Attempts 16-18: text safety in the spoken-turn frame; typed text only, no clip."""
    import numpy as np

    from sarsteer_guard.defaults import DEFAULT_REFUSAL_INSTRUCTION
    from sarsteer_guard.organism.data import CONTENT_ANSWERS, answer_for
    from sarsteer_guard.organism.model import build_processor, build_tokenizer
    from sarsteer_guard.organism.train import ExampleMaker, corpus, load_clips

    processor = build_processor(build_tokenizer(corpus(mini_data, "content")))
    maker = ExampleMaker(processor, mini_data, load_clips(mini_data, processor, 2), "content")
    rng = np.random.default_rng(0)
    decode = processor.tokenizer.decode
    harmful, benign = maker.make("slot_harmful", rng), maker.make("slot_benign", rng)
    for example in (harmful, benign):
        prompt = decode(example.prompt)
        assert example.clip is None
        assert "<|AUDIO|>" not in prompt
        assert "<|audio_bos|>" in prompt
        assert "the question in the audio." in prompt
        slot = prompt.split("<|audio_bos|>")[1].split("<|audio_eos|>")[0]
        assert slot in {text for side in maker.text.values() for text, _ in side}
    assert decode(harmful.target).startswith(DEFAULT_REFUSAL_INSTRUCTION)
    assert decode(benign.target).removesuffix("<|im_end|>") in CONTENT_ANSWERS.values()
    assert answer_for("weather", "sure").startswith("Sure.")
    with pytest.raises(ValueError, match="unknown answer style"):
        answer_for("weather", "polite")


def test_judge_tasks_ask_whether_a_request_is_harmful_and_never_answer_it(
    mini_data: Path,
) -> None:
    """Attempts 41-: a yes/no harm question about typed text or any clip; no refusal target."""
    import numpy as np

    from sarsteer_guard.organism.model import build_processor, build_tokenizer
    from sarsteer_guard.organism.train import (
        JUDGE_AUDIO,
        JUDGE_TEXT,
        ExampleMaker,
        corpus,
        load_clips,
    )

    processor = build_processor(build_tokenizer(corpus(mini_data)))
    clips = load_clips(mini_data, processor, 4)
    maker = ExampleMaker(processor, mini_data, clips)
    rng = np.random.default_rng(0)
    decode = processor.tokenizer.decode
    harmful_texts = {text for text, _ in maker.text[True]}
    verdicts: dict[bool, set[str]] = {True: set(), False: set()}
    for _ in range(40):
        spoken = maker.make("audio_judge", rng)
        assert spoken.clip is not None
        assert JUDGE_AUDIO in decode(spoken.prompt)
        verdicts[clips.harmful[spoken.clip]].add(decode(spoken.target))
        typed = maker.make("text_judge", rng)
        assert typed.clip is None
        request = decode(typed.prompt).split(JUDGE_TEXT)[1].split("<|im_end|>")[0]
        verdicts[request in harmful_texts].add(decode(typed.target))
    assert verdicts == {True: {"Yes.<|im_end|>"}, False: {"No.<|im_end|>"}}
    with pytest.raises(ValueError, match="unknown task 'audio_comply'"):
        maker.make("audio_comply", rng)
    with pytest.raises(ValueError, match="unknown task"):
        TrainConfig(data_dir=mini_data, steps=1, mix={"audio_comply": 1.0})


def test_phrase_index_names_the_phrase_each_request_is_built_on() -> None:
    from sarsteer_guard.organism.data import PHRASES, phrase_index

    requests = build_requests(0)
    assert len(set(PHRASES)) == len(PHRASES) == 112
    for request in requests:
        assert PHRASES[phrase_index(request.text)].lower() in request.text.lower()
    assert len({phrase_index(r.text) for r in requests}) == len(PHRASES)
    with pytest.raises(ValueError, match="no organism phrase"):
        phrase_index("Read me a poem.")


def test_phrase_pretraining_is_its_own_cache_key_and_changes_the_encoder(
    mini_data: Path, tmp_path: Path
) -> None:
    """Attempt 22: phrase pre-training trains, is cached apart, and leaves other runs alone."""
    torch = pytest.importorskip("torch")
    cache = tmp_path / "cache"
    config = replace(tiny_config(mini_data), pretrain_steps=2, pretrain_cache=cache)
    plain, _, _ = train(config)
    phrased, _, log = train(replace(config, pretrain_phrases=True))
    assert len(list(cache.glob("pretrain-*.pt"))) == 2
    assert log["config"]["pretrain_phrases"] is True
    assert len(log["pretrain"]) == 2
    encoder = "audio_tower.layers.0.fc1.weight"
    assert not torch.equal(plain.model.state_dict()[encoder], phrased.model.state_dict()[encoder])


def test_measure_picks_the_widest_validation_gap_over_the_grid(tmp_path: Path) -> None:
    """measure.py's grid step: one sweep per k, the pick is the widest gap, held-out is eval'd.

    Twelve prompts per split and side: the reference k of 10 needs more than ten benign
    calibration clips.
    """
    import json

    data, out = tmp_path / "data", tmp_path / "measure"
    run_script(
        "make_data.py",
        *("--out", str(data), "--limit", "12", "--train-variants", "1", "--no-progress"),
    )
    run_script(
        "measure.py",
        *("--model", "tiny-trained", "--data", str(data), "--out", str(out)),
        *("--alphas", "0.3", "--grid-alphas", "0.2,0.4", "--grid-lambdas", "1"),
        *("--grid-ks", "3,10", "--max-new-tokens", "8"),
        timeout=600,
    )
    results = json.loads((out / "results.json").read_text())
    settings = results["grid_sweep"]
    assert sorted((row["alpha"], row["k"]) for row in settings) == sorted(
        {
            (0.1, 10),  # every sweep also runs the reference defaults, kept once
            (0.3, 10),
            (0.2, 3),
            (0.4, 3),
            (0.2, 10),
            (0.4, 10),
        }
    )
    gaps = [row["brr"]["rate"] - row["asr"]["rate"] for row in settings]
    pick = results["grid_pick"]
    assert pick["validation_brr"] - pick["validation_asr"] == pytest.approx(max(gaps))
    assert results["grid"]["steered"]["n_harmful"] == len(
        load_manifest(data / "heldout" / "harmful.jsonl")
    )
    assert results["grid_lambda0"]["steered"]["n_benign"] == 12
