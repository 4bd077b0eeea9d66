"""The ``vllm`` engine name behind the seam, checked without vLLM (the main test venv).

What runs on vLLM itself is in ``tests/vllm_backend`` (the ``.venv-vllm`` suite); here: the
registry entry, the one-line errors before any engine exists, the option plumbing of the CLI
and the integrations, and the built-in ``tiny`` model's vLLM-compatible shape.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sarsteer_guard.backends import backend_names, open_backend
from sarsteer_guard.backends.vllm.backend import OPTIONS_ENV, check_options, env_options
from sarsteer_guard.backends.vllm.resolve import resolve_model
from sarsteer_guard.cli import build_parser
from sarsteer_guard.connect import GuardHandle
from sarsteer_guard.errors import GuardError, ModelLoadError
from sarsteer_guard.guard.core import Guard
from sarsteer_guard.models.builtin import TINY_HEAD_DIM, build_tiny_model

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_vllm_is_a_registered_engine() -> None:
    assert "vllm" in backend_names()


@pytest.mark.optional  # runs where vLLM is absent (the main venv), skips in .venv-vllm
@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_without_vllm_the_engine_name_says_what_to_install() -> None:
    with pytest.raises(GuardError, match=r"pip install 'sarsteer-guard\[vllm\]'") as caught:
        open_backend("vllm", "tiny")
    assert "\n" not in str(caught.value)


def test_engine_options_come_from_the_environment_and_are_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(OPTIONS_ENV, json.dumps({"tensor_parallel_size": 2, "max_model_len": 4096}))
    assert env_options() == {"tensor_parallel_size": 2, "max_model_len": 4096}
    check_options(env_options())
    with pytest.raises(GuardError, match="unknown vLLM engine option"):
        check_options({"tensor_paralel_size": 2})
    monkeypatch.setenv(OPTIONS_ENV, "[1]")
    with pytest.raises(GuardError, match="JSON object"):
        env_options()
    monkeypatch.setenv(OPTIONS_ENV, "{oops")
    with pytest.raises(GuardError, match="not valid JSON"):
        env_options()


def test_tiny_planted_is_refused_on_vllm_in_one_line() -> None:
    with pytest.raises(ModelLoadError, match="transformers engine only") as caught:
        resolve_model("tiny-planted")
    assert "\n" not in str(caught.value)


def test_the_cli_and_both_integrations_take_an_engine() -> None:
    parser = build_parser()
    for command in (
        ["serve"],
        ["respond", "--audio", "x.wav"],
        ["calibrate", "--out", "v.safetensors"],
    ):
        args = parser.parse_args([*command, "--engine", "vllm"])
        assert args.engine == "vllm"
    guard = GuardHandle.from_options(model="tiny", engine="vllm").guard
    assert isinstance(guard, Guard)
    assert guard._engine_spec == "vllm"


def test_the_builtin_tiny_model_has_a_head_size_vllm_supports() -> None:
    model, _ = build_tiny_model()
    text = model.config.text_config
    assert text.head_dim == TINY_HEAD_DIM == 64
    assert text.hidden_size // text.num_attention_heads == 64


def test_compose_has_a_vllm_backed_guard_service() -> None:
    import yaml

    root = Path(__file__).resolve().parents[1]
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    service = compose["services"]["guard-vllm"]
    assert service["profiles"] == ["vllm"]  # opt-in: `docker compose --profile vllm up`
    command = service["command"]
    assert command[command.index("--engine") + 1] == "vllm"
    assert OPTIONS_ENV in service["environment"]
    assert service["build"]["target"] == "guard-vllm"
    assert "FROM guard AS guard-vllm" in (root / "Dockerfile").read_text()


def test_the_pipecat_service_builds_its_guard_on_the_named_engine() -> None:
    pipecat_sarsteer = pytest.importorskip("pipecat_sarsteer")
    service = pipecat_sarsteer.SARSteerGuardService(model="tiny", engine="vllm")
    guard = service.guard
    assert isinstance(guard, Guard)
    assert guard._engine_spec == "vllm"
