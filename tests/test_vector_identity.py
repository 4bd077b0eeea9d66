"""One identity for a vector set, policy to store: the refusal separator is part of it.

The SARSteer reference joins the refusal instruction to the prompt with no separator; this
library did with one space before the separator was recorded. The separator changes the
vectors, so it is in the set's metadata and its store key, and sets made before it existed
keep loading, verifying and being found under their old ids.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from sarsteer_guard.calibration import CalibrationConfig, calibrate, vector_set_key
from sarsteer_guard.cli import main
from sarsteer_guard.defaults import (
    DEFAULT_BENIGN,
    DEFAULT_HARMFUL,
    DEFAULT_PROMPT,
    DEFAULT_REFUSAL_INSTRUCTION,
)
from sarsteer_guard.errors import PolicyError
from sarsteer_guard.manifest import Manifest, load_manifest
from sarsteer_guard.models.base import Message, ModelFacts
from sarsteer_guard.policy import Policy, parse_policy
from sarsteer_guard.steering import SteeringVectors, VectorMeta
from sarsteer_guard.steering.vectors import FORMAT, _digest
from sarsteer_guard.store import VectorSetKey
from sarsteer_guard.vector_request import VectorRequest


class RecordingSource:
    """A capture source that records the texts it was asked about (no model needed)."""

    def __init__(self) -> None:
        self.facts = ModelFacts("rec", "ab" * 32, num_layers=2, hidden_size=4, sampling_rate=16000)
        self.texts: list[str] = []

    def capture(self, conversations: Sequence[Sequence[Message]]) -> torch.Tensor:
        self.texts.extend(c[-1].text for c in conversations)
        gen = torch.Generator().manual_seed(len(self.texts))
        return torch.randn(len(conversations), 2, 4, generator=gen)


def head(path: Path, n: int) -> Manifest:
    manifest = load_manifest(path)
    return Manifest(path=manifest.path, items=manifest.items[:n])


def meta(**overrides: object) -> VectorMeta:
    fields: dict[str, object] = {
        "model_id": "m",
        "model_fingerprint": "ab" * 32,
        "num_layers": 2,
        "hidden_size": 4,
        "refusal_instruction": DEFAULT_REFUSAL_INSTRUCTION,
        "prompt": DEFAULT_PROMPT,
        "k": 1,
        "lam": 1.0,
        "n_harmful": 2,
        "n_benign": 2,
        "calibration_digest": "cd" * 32,
    }
    fields.update(overrides)
    return VectorMeta(**fields)  # type: ignore[arg-type]


def test_calibration_joins_with_the_separator_and_records_it_in_meta_and_key() -> None:
    harmful, benign = head(DEFAULT_HARMFUL, 2), head(DEFAULT_BENIGN, 2)
    keys = {}
    for separator in ("", " "):
        source = RecordingSource()
        config = CalibrationConfig(k=1, refusal_separator=separator)
        result = calibrate(source, harmful, benign, config, progress=False)
        joined = f"{DEFAULT_PROMPT}{separator}{DEFAULT_REFUSAL_INSTRUCTION}"
        assert source.texts.count(joined) == 4  # every turn, harmful and benign
        assert source.texts.count(DEFAULT_PROMPT) == 4
        assert result.vectors.meta.refusal_separator == separator
        stored = VectorSetKey.from_blob(result.vectors.to_bytes())
        assert stored == vector_set_key(source.facts, harmful, benign, config)
        keys[separator] = stored
    assert keys[""].id != keys[" "].id
    assert CalibrationConfig().refusal_separator == ""  # the reference's form by default


def test_sets_made_before_the_separator_was_recorded_still_load_under_their_old_id() -> None:
    tensor = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    old = meta().to_strings()
    del old["refusal_separator"]  # what every file written before the field looked like
    digest = _digest(tensor, old)
    blob = save({"vectors": tensor}, metadata={**old, "format": FORMAT, "digest": digest})
    loaded = SteeringVectors.from_bytes(blob)  # verifies against the metadata as written
    assert loaded.meta.refusal_separator == " "
    key = VectorSetKey.from_blob(blob)
    assert key.refusal_separator == " "
    legacy = VectorSetKey(
        model_fingerprint="ab" * 32,
        calibration_digest="cd" * 32,
        refusal_instruction=DEFAULT_REFUSAL_INSTRUCTION,
        k=1,
        lam=1.0,
    )
    assert key.id == legacy.id  # one space is the legacy form: the id is unchanged
    # Re-saved, the set states its separator and keeps its store id.
    again = SteeringVectors.from_bytes(loaded.to_bytes())
    assert again.meta.refusal_separator == " "
    assert VectorSetKey.from_blob(loaded.to_bytes()).id == legacy.id
    assert VectorSetKey.from_metadata(meta(refusal_separator="").to_strings()).id != legacy.id
    tampered = save(
        {"vectors": tensor},
        metadata={**old, "refusal_separator": "", "format": FORMAT, "digest": digest},
    )
    with pytest.raises(Exception, match="digest"):
        SteeringVectors.from_bytes(tampered)


def policy(calibration: str) -> Policy:
    return parse_policy(f'name: p\nversion: "1"\nmodel: m\ncalibration: {calibration}\n')


def test_the_policy_asks_for_the_separator_it_names() -> None:
    def request(calibration: str) -> VectorRequest:
        return policy(calibration).evaluate({}).vector_request

    default = request("{}")
    spaced = request("{refusal_separator: ' '}")
    assert default.refusal_separator == ""
    assert spaced.refusal_separator == " "
    assert default != spaced
    assert default.harmful == DEFAULT_HARMFUL
    assert spaced.as_spec()["refusal_separator"] == " "
    config = CalibrationConfig.from_request(spaced, batch_size=3)
    assert (config.refusal_separator, config.batch_size, config.k) == (" ", 3, 10)
    stored = request("{vector_set: abc}")
    assert stored.is_stored
    assert policy("{}").vector_key() != policy("{refusal_separator: ' '}").vector_key()
    with pytest.raises(PolicyError, match="vector_set"):
        request("{vector_set: abc, refusal_separator: ' '}")
    with pytest.raises(PolicyError, match="control character"):
        request('{refusal_separator: "\\t"}')


def test_the_calibrate_command_takes_the_separator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "v.safetensors"
    args = ["calibrate", "--model", "tiny", "--limit", "2", "--k", "1", "--out", str(out)]
    assert main([*args, "--refusal-separator", " ", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["refusal_separator"] == " "
    assert SteeringVectors.load(out).meta.refusal_separator == " "
