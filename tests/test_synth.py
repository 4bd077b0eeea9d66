"""`sarsteer-guard synth` and sarsteer_guard.synth: real espeak-ng and sox, no mocks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sarsteer_guard.cli import main
from sarsteer_guard.errors import ManifestError
from sarsteer_guard.manifest import load_manifest
from sarsteer_guard.synth import (
    Augmentation,
    SynthPlan,
    apply_augmentation,
    parse_prompts,
    plan_clips,
    synthesize_manifest,
)
from sarsteer_guard.synth.augment import sox_available
from sarsteer_guard.testing.speech import espeak_available, synthesize

needs_tools = pytest.mark.skipif(
    not (espeak_available() and sox_available()), reason="espeak-ng and sox not installed"
)

PROMPTS = "# a comment\nSet a timer for ten minutes.\ttimers\n\nWhat is the capital of France?\n"


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((folder / "audio").glob("*.flac"))
    }


def test_parse_prompts_reads_categories_and_skips_comments() -> None:
    prompts = parse_prompts(PROMPTS)
    assert [(p.text, p.category, p.line) for p in prompts] == [
        ("Set a timer for ten minutes.", "timers", 2),
        ("What is the capital of France?", None, 4),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [("a\tb\tc\n", "3 tab-separated columns"), ("# only\n\n", "no prompts"), ("\tcat\n", "empty")],
)
def test_parse_prompts_rejects_bad_lists(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_prompts(text, "list.txt")


def test_plan_is_reproducible_and_independent_of_later_prompts() -> None:
    plan = SynthPlan(voices=("a", "b", "c"), rates=(120, 200), telephone_share=0.5, seed=7)
    few = plan_clips(parse_prompts("one\ntwo\n"), plan, "x")
    more = plan_clips(parse_prompts("one\ntwo\nthree\n"), plan, "x")
    assert few == more[:2]
    other_seed = plan_clips(
        parse_prompts("one\ntwo\nthree\n"), SynthPlan(**{**plan.__dict__, "seed": 8}), "x"
    )
    assert other_seed != more


@needs_tools
def test_telephone_band_removes_energy_above_4khz() -> None:
    clip = synthesize("The weather tomorrow will be sunny and warm.", rate=16000)
    rng = np.random.default_rng(0)
    phone = apply_augmentation(clip, 16000, Augmentation(telephone=True), rng)

    def high_share(x: np.ndarray) -> float:
        spectrum = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(x.size, 1 / 16000)
        return float(spectrum[freqs > 4000].sum() / spectrum.sum())

    assert high_share(clip) > 0.003
    assert high_share(phone) < high_share(clip) / 20


@needs_tools
def test_noise_hits_the_requested_snr_and_speed_changes_length() -> None:
    clip = synthesize("Play some music in the kitchen.", rate=16000)
    rng = np.random.default_rng(1)
    noisy = apply_augmentation(clip, 16000, Augmentation(snr_db=10.0), rng)
    noise = noisy - clip
    snr = 10 * np.log10(
        np.mean(clip.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2)
    )
    assert snr == pytest.approx(10.0, abs=0.3)
    fast = apply_augmentation(clip, 16000, Augmentation(speed=1.25), rng)
    assert fast.size == pytest.approx(clip.size / 1.25, rel=0.02)


@needs_tools
def test_synth_cli_writes_a_loadable_manifest_reproducibly(tmp_path: Path) -> None:
    prompts = tmp_path / "requests.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    argv = [
        "synth", str(prompts), "--voices", "en-us,en-gb+f3", "--rates", "140,190",
        "--pitches", "30,70", "--speeds", "0.9,1.1", "--telephone", "0.5", "--noise", "0.5",
        "--snr", "15", "--variants", "3", "--seed", "3", "--no-progress",
    ]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    manifest = load_manifest(tmp_path / "a" / "requests.jsonl")
    assert len(manifest) == 6
    assert [item.category for item in manifest][:3] == ["timers"] * 3
    assert manifest.items[3].transcript == "What is the capital of France?"
    audio, rate = sf.read(manifest.items[0].audio)
    assert rate == 16000
    assert audio.size > 8000
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert main([*argv[:-3], "--seed", "4", "--no-progress", "--out", str(tmp_path / "c")]) == 0
    assert _digests(tmp_path / "c") != _digests(tmp_path / "a")


@needs_tools
def test_synth_cli_bad_voice_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n", encoding="utf-8")
    assert main(["synth", str(prompts), "--out", str(tmp_path), "--voices", "xx-nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "xx-nope" in err
    assert "\n" not in err


@needs_tools
def test_synthesize_manifest_returns_voices_per_clip(tmp_path: Path) -> None:
    plan = SynthPlan(voices=("en-us", "en-gb"), variants=4, seed=0)
    path, specs = synthesize_manifest(parse_prompts("hello\n"), tmp_path, "v", plan, progress=False)
    assert {s.voice for s in specs} <= {"en-us", "en-gb"}
    assert [item.id for item in load_manifest(path)] == [s.id for s in specs]
