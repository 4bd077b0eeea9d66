"""What a wheel ships must match the repository's canonical files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sarsteer_guard
from sarsteer_guard.policy import default_policy_path

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_default_policy_is_the_shipped_one() -> None:
    packaged = Path(sarsteer_guard.__file__).parent / "data" / "policies" / "default.yaml"
    assert packaged.read_bytes() == (ROOT / "policies" / "default.yaml").read_bytes()
    assert default_policy_path() == packaged


def test_public_api_is_exported_from_the_package_root() -> None:
    for name in sarsteer_guard.__all__:
        assert getattr(sarsteer_guard, name) is not None


def test_importing_the_package_root_stays_light() -> None:
    code = (
        "import sys, sarsteer_guard; "
        "print(sorted({'torch', 'transformers', 'numpy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
