"""``sarsteer-guard vectors`` push/pull/list/verify, in process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from sarsteer_guard.cli import vectors as vectors_cli
from sarsteer_guard.errors import GuardError, VectorIntegrityError
from sarsteer_guard.store import SigningKey, VectorSetKey

META = {
    "model_id": "tiny-audio",
    "model_fingerprint": "fp",
    "num_layers": "3",
    "hidden_size": "5",
    "refusal_instruction": "I cannot assist with that.",
    "prompt": "p",
    "k": "2",
    "lam": "1.0",
    "n_harmful": "2",
    "n_benign": "2",
    "calibration_digest": "cal",
    "library_version": "0.1.0",
    "created_at": "2026-11-22T00:00:00Z",
}


def run(*argv: str) -> int:
    """Parse with only this command group (other groups are not under test) and run."""
    parser = argparse.ArgumentParser(prog="sarsteer-guard")
    vectors_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args) or 0)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SARSTEER_VECTOR_KEY", SigningKey.generate().secret.hex())
    monkeypatch.delenv("SARSTEER_STORE_URL", raising=False)
    return tmp_path


def test_push_pull_list_verify(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = bytes(save({"vectors": np.arange(15, dtype=np.float32).reshape(3, 5)}, metadata=META))
    (env / "set.safetensors").write_bytes(blob)
    store = str(env / "store")

    assert run("vectors", "push", str(env / "set.safetensors"), "--store", store) == 0
    set_id = capsys.readouterr().out.strip()
    assert set_id == VectorSetKey.from_blob(blob).id

    assert run("vectors", "pull", set_id, "--store", store, "--out", str(env / "out")) == 0
    assert (env / "out").read_bytes() == blob
    capsys.readouterr()

    assert run("vectors", "list", "--store", store, "--json") == 0
    (line,) = capsys.readouterr().out.splitlines()  # one JSON object per set (item 21)
    info = json.loads(line)
    assert (info["id"], info["model_id"], info["num_layers"], info["hidden_size"]) == (
        set_id,
        "tiny-audio",
        3,
        5,
    )
    assert run("vectors", "list", "--store", f"file://{store}") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["ID", "MODEL"]
    assert table[1].startswith(set_id)

    assert run("vectors", "verify", "--store", store) == 0
    assert capsys.readouterr().out.strip() == f"ok   {set_id}"

    # Tamper with the stored file: verify names the set and fails with one line.
    path = env / "store" / f"{set_id}.vset"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(VectorIntegrityError, match="1 of 1") as caught:
        run("vectors", "verify", "--store", store)
    assert "\n" not in str(caught.value)
    assert capsys.readouterr().out.startswith(f"FAIL {set_id}")
    with pytest.raises(VectorIntegrityError):
        run("vectors", "pull", set_id, "--store", store, "--out", str(env / "out2"))
    assert not (env / "out2").exists()


def test_errors_are_guard_errors(env: Path) -> None:
    with pytest.raises(GuardError, match="cannot read"):
        run("vectors", "push", str(env / "missing"), "--store", str(env / "s"))
    (env / "junk").write_bytes(b"junk")
    with pytest.raises(GuardError, match="not a steering-vector set"):
        run("vectors", "push", str(env / "junk"), "--store", str(env / "s"))
    with pytest.raises(GuardError, match="no vector set"):
        run("vectors", "pull", "0" * 32, "--store", str(env / "s"), "--out", str(env / "o"))
