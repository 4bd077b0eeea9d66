"""Calibration manifests: parsing, line-numbered errors, digest, and the shipped set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sarsteer_guard.audio import load_audio
from sarsteer_guard.errors import ManifestError
from sarsteer_guard.manifest import (
    ManifestItem,
    load_manifest,
    shipped_manifest,
    write_manifest,
)


def write_clip(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(1600)).astype(np.float32), 16000)
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    write_clip(tmp_path / "audio" / "a.flac", 1)
    write_clip(tmp_path / "audio" / "b.flac", 2)
    manifest = tmp_path / "harmful.jsonl"
    manifest.write_text(
        "# a comment\n"
        '{"id": "first", "audio": "audio/a.flac", "transcript": "hello"}\n'
        "\n"
        '{"audio": "audio/b.flac", "text": "Answer the question in the audio."}\n'
        "   # indented comment\n"
        '{"text": "a text-only item"}\n',
        encoding="utf-8",
    )
    return manifest


def test_load_resolves_paths_and_default_ids(corpus: Path) -> None:
    m = load_manifest(corpus)
    assert len(m) == 3
    assert [item.id for item in m] == ["first", "harmful:4", "harmful:6"]
    assert m.items[0].audio == (corpus.parent / "audio" / "a.flac").resolve()
    assert m.items[0].transcript == "hello"
    assert m.items[1].text == "Answer the question in the audio."
    assert m.items[2].audio is None
    assert not m.has_audio
    assert m.items[1].source == f"{corpus.resolve()}:4"


def test_paths_are_relative_to_the_manifest_not_cwd(
    corpus: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert load_manifest(corpus).items[0].audio == (corpus.parent / "audio/a.flac").resolve()


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"audio": "audio/a.flac"', "invalid JSON"),
        ('["audio/a.flac"]', "expected a JSON object, got array"),
        ('{"audio": "audio/a.flac", "lang": "en"}', "unknown key 'lang'"),
        ('{"adio": "audio/a.flac"}', "unknown key 'adio'"),
        ('{"audio": 3}', "'audio' must be a string, got number"),
        ('{"audio": "audio/a.flac", "id": null}', "'id' must be a string, got null"),
        ('{"audio": "audio/a.flac", "text": "  "}', "'text' is empty"),
        ('{"audio": "audio/missing.flac"}', "audio file 'audio/missing.flac' not found"),
        ('{"id": "x"}', "no 'audio', 'text' or 'transcript'"),
        ('{"id": "first", "audio": "audio/b.flac"}', "duplicate id 'first' (first used on line 1)"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    write_clip(tmp_path / "audio" / "a.flac", 1)
    write_clip(tmp_path / "audio" / "b.flac", 2)
    path = tmp_path / "set.jsonl"
    path.write_text(f'{{"id": "first", "audio": "audio/a.flac"}}\n\n# note\n{line}\n')
    with pytest.raises(ManifestError) as error:
        load_manifest(path)
    message = str(error.value)
    assert message.startswith(f"{path}:4: "), message
    assert needle in message
    assert "; " in message  # says what to do
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "needle"),
    [(None, "manifest not found"), ("# only comments\n\n", "no items"), (b"\xff\xfe", "UTF-8")],
)
def test_bad_manifest_file(tmp_path: Path, content: str | bytes | None, needle: str) -> None:
    path = tmp_path / "m.jsonl"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ManifestError, match=needle):
        load_manifest(path)


def test_digest_tracks_audio_bytes_text_and_ids(corpus: Path) -> None:
    digest = load_manifest(corpus).digest
    assert load_manifest(corpus).digest == digest  # stable

    write_clip(corpus.parent / "audio" / "b.flac", 99)  # re-synthesised audio, same path
    changed_audio = load_manifest(corpus).digest
    assert changed_audio != digest

    text = corpus.read_text().replace("a text-only item", "another text")
    corpus.write_text(text)
    assert load_manifest(corpus).digest != changed_audio

    corpus.write_text(text.replace('"first"', '"renamed"'))
    assert load_manifest(corpus).digest not in (digest, changed_audio)


def test_digest_does_not_depend_on_location(
    corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    moved = tmp_path_factory.mktemp("moved") / "copy"
    shutil.copytree(corpus.parent, moved)
    assert load_manifest(moved / corpus.name).digest == load_manifest(corpus).digest


def test_write_manifest_round_trip(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clips" / "one.flac", 3)
    items = [
        ManifestItem(id="one", audio=clip, transcript="Was ist das? ünïcödé"),
        ManifestItem(id="two", text="text only"),
    ]
    path = tmp_path / "sets" / "out.jsonl"
    write_manifest(path, items, header="made by a test\nsecond line")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[:2] == ["# made by a test", "# second line"]
    assert json.loads(lines[2]) == {
        "id": "one",
        "audio": "../clips/one.flac",
        "transcript": "Was ist das? ünïcödé",
    }
    loaded = load_manifest(path)
    assert [(i.id, i.audio, i.text, i.transcript) for i in loaded] == [
        (i.id, i.audio, i.text, i.transcript) for i in items
    ]


def test_shipped_calibration_set_loads_and_decodes() -> None:
    harmful = load_manifest(shipped_manifest("harmful"))
    benign = load_manifest(shipped_manifest("benign"))
    assert len(harmful) >= 60
    assert len(benign) >= 60
    ids = [item.id for item in (*harmful, *benign)]
    assert len(set(ids)) == len(ids)
    transcripts = [item.transcript for item in (*harmful, *benign)]
    assert all(transcripts)
    assert len(set(transcripts)) == len(transcripts)
    total = 0.0
    for item in (*harmful, *benign):
        assert item.audio is not None
        assert item.audio.is_file()
        assert sf.info(str(item.audio)).samplerate == 16000
        audio = load_audio(item.audio, target_rate=16000)
        assert 0.5 < audio.size / 16000 < 8.0
        assert 0.05 < np.abs(audio).max() <= 1.0
        total += item.audio.stat().st_size
    assert total < 6.5e6
    assert len({harmful.digest, benign.digest}) == 2


def test_shipped_manifest_name_checked() -> None:
    with pytest.raises(ManifestError, match="'harmful' or 'benign'"):
        shipped_manifest("evil")


def test_clip_longer_than_the_cap_is_refused_at_load_from_its_header(tmp_path: Path) -> None:
    """A decompression bomb in a calibration manifest is named with its line, undecoded."""
    long = tmp_path / "audio" / "long.flac"
    long.parent.mkdir(parents=True)
    sf.write(long, np.zeros(40 * 8000, dtype=np.float32), 8000)
    write_clip(tmp_path / "audio" / "a.flac", 1)
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "audio/a.flac"}\n{"audio": "audio/long.flac"}\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: audio file 'audio/long.flac' is 40.0 s long")
    assert "at most 30 s" in message


def test_clip_shorter_than_a_tenth_of_a_second_is_refused_at_load(tmp_path: Path) -> None:
    blip = tmp_path / "blip.wav"
    sf.write(blip, np.zeros(800, dtype=np.float32), 16000)
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "blip.wav"}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: audio file 'blip.wav' is 50 ms long"):
        load_manifest(path)
