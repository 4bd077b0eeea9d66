"""Guard-side hardening from issue #10: each test fails on the code before the fix.

Items: 1 (shadow turns audited by what enforce would have done), 2 (a signing key that
can never work stops the start), 4 (a policy's ``model:`` is enforced), 5 (a reloaded
policy is prewarmed before it is put in force), 6 (missing audit salt named at start),
9 (conversation history bounded in bytes), 23 (no implicit test model), A/E (strings
normalised at the Guard edge, audit writes never lost, spool replayed at start).
"""

from __future__ import annotations

import asyncio
import secrets
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.connect import GuardHandle, GuardOptionsError, build_guard
from sarsteer_guard.errors import GuardError
from sarsteer_guard.guard.core import Guard
from sarsteer_guard.guard.events import Turn, TurnDecision
from sarsteer_guard.models import load_model
from sarsteer_guard.store.errors import SigningKeyError
from sarsteer_guard.testing.audit import CapturingAuditLog

POLICY = """
name: hardening
version: "1"
model: "{model}"
calibration: {{k: 10, lambda: 1.0}}
defaults: {{alpha: {alpha}, layers: {layers}}}
mode: {mode}
refusal: {{message: null}}
audit: {{record: {record}, keep_audio: false, retention_days: 30{extra_audit}}}
"""


def policy_text(
    *,
    model: str = "*",
    alpha: float = 0.0,
    layers: str = "all",
    mode: str = "enforce",
    record: str = "all",
    extra_audit: str = "",
) -> str:
    return textwrap.dedent(
        POLICY.format(
            model=model,
            alpha=alpha,
            layers=layers,
            mode=mode,
            record=record,
            extra_audit=extra_audit,
        )
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_model("tiny")


@pytest.fixture(scope="module")
def planted() -> Any:
    return load_model("tiny-planted")


@pytest.fixture
def run() -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


def tone(seconds: float = 0.5, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return float_to_pcm16((0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in stream]


# -- item 23: no implicit (random) test model ---------------------------------------------
def test_guard_without_a_model_is_refused_with_the_argument_named() -> None:
    with pytest.raises(GuardError, match=r"no model given: pass model=") as caught:
        Guard()
    assert "\n" not in str(caught.value)


def test_adapters_without_a_model_are_refused_at_construction() -> None:
    with pytest.raises(GuardOptionsError, match=r"model="):
        GuardHandle.from_options()
    with pytest.raises(GuardOptionsError, match=r"model="):
        build_guard()
    # Naming a model (even the built-in test model) or a server is an explicit choice.
    assert GuardHandle.from_options(model="tiny").owned
    assert type(build_guard(remote_url="ws://127.0.0.1:9/v1/turns")).__name__ == "RemoteGuard"


def test_livekit_model_needs_an_explicit_model() -> None:
    sarsteer = pytest.importorskip("livekit.plugins.sarsteer")
    with pytest.raises(GuardOptionsError, match=r"model="):
        sarsteer.RealtimeModel()
    assert sarsteer.RealtimeModel(model="tiny").model == "tiny"


def test_pipecat_service_needs_an_explicit_model() -> None:
    service_module = pytest.importorskip("pipecat_sarsteer")
    with pytest.raises(GuardOptionsError, match=r"model="):
        service_module.SARSteerGuardService()


# -- item 2: a signing key that can never work stops the start ------------------------------
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, r"needs SARSTEER_VECTOR_KEY.*export SARSTEER_VECTOR_KEY="),
        ("abcd1234", r"is 4 bytes, need 32\+.*set SARSTEER_VECTOR_KEY"),
        ("not a key!!", r"SARSTEER_VECTOR_KEY is neither hex nor base64"),
    ],
)
def test_redis_store_without_a_usable_key_refuses_to_start(
    tiny: Any,
    tmp_path: Path,
    run: Any,
    monkeypatch: pytest.MonkeyPatch,
    value: str | None,
    message: str,
) -> None:
    if value is None:
        monkeypatch.delenv("SARSTEER_VECTOR_KEY", raising=False)
    else:
        monkeypatch.setenv("SARSTEER_VECTOR_KEY", value)
    policy = write(tmp_path / "p.yaml", policy_text())
    guard = Guard(tiny, policy, "redis://127.0.0.1:6379/0", CapturingAuditLog(), max_new_tokens=2)
    with pytest.raises(SigningKeyError, match=message) as caught:
        run(guard.start())
    assert "\n" not in str(caught.value)
    assert not guard.ready
    run(guard.close())


def test_directory_store_with_a_malformed_key_refuses_to_start(
    tiny: Any, tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SARSTEER_VECTOR_KEY", "not-hex-nor-base64!")
    policy = write(tmp_path / "p.yaml", policy_text())
    guard = Guard(tiny, policy, str(tmp_path / "store"), CapturingAuditLog())
    with pytest.raises(SigningKeyError, match=r"neither hex nor base64"):
        run(guard.start())
    run(guard.close())
    monkeypatch.setenv("SARSTEER_VECTOR_KEY", secrets.token_hex(32))
    guard = Guard(tiny, policy, str(tmp_path / "store"), CapturingAuditLog(), max_new_tokens=2)

    async def go() -> list[Any]:
        async with guard:
            return await collect(guard.respond(Turn(audio=tone())))

    assert isinstance(run(go())[-1], TurnDecision)
