"""The deployment files: docker-compose.yml is valid Compose and wires what docs/server.md says.

Validation without a Docker engine: ``docker-compose config -q`` (Debian's
``docker-compose`` package, or the ``docker compose`` plugin) when installed, and always
the Compose JSON Schema vendored at ``tests/data/compose-spec.json`` (copied from
docker-compose 1.29.2's ``compose/config/compose_spec.json``, Apache-2.0), since the
schema cannot be downloaded at test time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"
REQUIRED_ENV = {
    "SARSTEER_MODEL": "Qwen/Qwen2-Audio-7B-Instruct",
    "SARSTEER_GUARD_TOKEN": "w" * 32,
    "SARSTEER_REDIS_PASSWORD": "r" * 32,
    "SARSTEER_VECTOR_KEY": "ab" * 32,
    "SARSTEER_AUDIT_SALT": "s" * 32,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_matches_the_compose_schema(compose: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert errors == []


def test_schema_catches_mistakes(compose: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    broken = json.loads(json.dumps(compose))
    broken["services"]["guard"]["deploy"]["resources"]["reservations"]["devices"][0][
        "capabilities"
    ] = "gpu"
    assert any("is not of type 'array'" in e.message for e in validator.iter_errors(broken))


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_docker_compose_config_accepts_it() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker-compose: apt-get install docker-compose")
    env = {**os.environ, **REQUIRED_ENV}
    ok = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    missing = {k: v for k, v in env.items() if k != "SARSTEER_GUARD_TOKEN"}
    refused = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env=missing,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert refused.returncode != 0
    assert "SARSTEER_GUARD_TOKEN" in refused.stderr


def test_guard_service_wiring(compose: dict[str, Any]) -> None:
    guard = compose["services"]["guard"]
    device = guard["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert any("/readyz" in part for part in guard["healthcheck"]["test"])
    assert guard["command"][:2] == ["--host", "0.0.0.0"]  # noqa: S104 - in a container
    assert guard["environment"]["SARSTEER_GUARD_TOKEN"].startswith("${SARSTEER_GUARD_TOKEN:?")
    assert guard["environment"]["SARSTEER_STORE_URL"].startswith("redis://redis:")
    assert guard["environment"]["SARSTEER_AUDIT_URL"].startswith("redis://")
    grace = guard["command"][guard["command"].index("--shutdown-grace-s") + 1]
    assert int(guard["stop_grace_period"].rstrip("s")) > int(grace)
    assert guard["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_persists_and_bot_uses_remote_guard(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert "--appendonly yes" in " ".join(redis["command"])
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "redis-data" in compose["volumes"]
    bot = compose["services"]["bot"]
    # Issue 14: the bot reaches the guard replicas through the load balancer.
    assert bot["environment"]["SARSTEER_REMOTE_URL"] == "ws://lb:8765/v1/turns"
    assert bot["depends_on"]["lb"]["condition"] == "service_started"


def test_dockerfile_runs_serve_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "ARG TORCH_INDEX_URL=" in text
    guard_stage = text.split("AS guard", 1)[1]
    assert "USER guard" in guard_stage
    assert 'ENTRYPOINT ["sarsteer-guard", "serve"]' in guard_stage
    assert '"--host", "0.0.0.0"' in guard_stage


def test_the_model_has_no_default(compose: dict[str, Any]) -> None:
    """Review item 4: no random test model by default (issue 10 item 23) in any guard."""
    for name in ("guard", "guard-vllm"):
        command = compose["services"][name]["command"]
        model = command[command.index("--model") + 1]
        assert model == "${SARSTEER_MODEL:?set SARSTEER_MODEL in .env}", name


def test_history_has_its_own_redis_without_persistence(compose: dict[str, Any]) -> None:
    """Review item 3: user audio in history never reaches a disk; memory is bounded."""
    history = compose["services"]["redis-history"]
    command = " ".join(history["command"])
    assert "--appendonly no" in command
    assert '--save ""' in command
    assert "--maxmemory-policy allkeys-lru" in command
    assert "--maxmemory " in command
    assert "volumes" not in history
    guard = compose["services"]["guard"]
    assert guard["environment"]["SARSTEER_HISTORY_URL"].endswith("@redis-history:6379/0")
    assert guard["depends_on"]["redis-history"]["condition"] == "service_healthy"
