"""Bearer tokens, health, readiness and metrics endpoints, and settings checks."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sarsteer_guard.server.settings import (
    ServerConfigError,
    ServerSettings,
    TokenSet,
    is_loopback,
    load_tokens,
)
from sarsteer_guard.server.testing import ServerThread, serve_in_thread
from sarsteer_guard.testing.scripted import ScriptedGuard

WORKER = "w" * 24 + "-worker"
READ = "r" * 24 + "-reader"


def get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url)  # noqa: S310 - loopback http URL built by the test
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


@pytest.fixture
def secured() -> Iterator[ServerThread]:
    settings = ServerSettings(tokens=TokenSet.from_tokens([WORKER], [READ]))
    with serve_in_thread(ScriptedGuard(), settings) as server:
        yield server


async def handshake_status(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        async with connect(url, additional_headers=headers) as ws:
            await ws.recv()
            return 101
    except InvalidStatus as error:
        return error.response.status_code


async def test_turns_need_a_worker_token(secured: ServerThread) -> None:
    assert await handshake_status(secured.url, None) == 401
    assert await handshake_status(secured.url, "x" * 31) == 403
    assert await handshake_status(secured.url, READ) == 403  # read-only may not run turns
    assert await handshake_status(secured.url, WORKER) == 101


async def test_missing_token_gets_401_with_challenge(secured: ServerThread) -> None:
    status, body, headers = await asyncio.to_thread(get, secured.http + "/metrics")
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("token", "status"), [(None, 401), ("nope" * 5, 403), (READ, 200), (WORKER, 200)]
)
async def test_metrics_token_rules(secured: ServerThread, token: str | None, status: int) -> None:
    code, body, _ = await asyncio.to_thread(get, secured.http + "/metrics", token)
    assert code == status
    if status == 200:
        assert "sarsteer_server_connections" in body


async def test_health_and_ready_are_open_for_probes(secured: ServerThread) -> None:
    status, body, _ = await asyncio.to_thread(get, secured.http + "/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    status, body, _ = await asyncio.to_thread(get, secured.http + "/readyz")
    assert status == 200
    assert json.loads(body) == {
        "ready": True,
        "reason": "ready",
        "open_turns": 0,
        "queue_depth": None,
    }


async def test_metrics_open_without_tokens() -> None:
    with serve_in_thread(ScriptedGuard()) as server:
        status, body, _ = await asyncio.to_thread(get, server.http + "/metrics")
    assert status == 200
    assert "# TYPE sarsteer_server_turns_total counter" in body


class SlowStartGuard(ScriptedGuard):
    """A guard whose model takes a while to load."""

    async def start(self) -> None:
        await asyncio.sleep(30)


async def test_readyz_503_while_loading_and_turns_refused() -> None:
    server = ServerThread(SlowStartGuard(), ServerSettings(port=_port()))
    server.thread.start()
    try:
        for _ in range(200):
            if server.server.started:
                break
            await asyncio.sleep(0.02)
        status, body, _ = await asyncio.to_thread(get, server.http + "/readyz")
        assert status == 503
        assert json.loads(body)["reason"].startswith("loading")
        assert (await asyncio.to_thread(get, server.http + "/healthz"))[0] == 200
        async with connect(server.url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "turn.start", "turn_id": "early"}))
            error = json.loads(await ws.recv())
        assert (error["turn_id"], error["kind"]) == ("early", "not_ready")
    finally:
        server.stop()


class BrokenGuard(ScriptedGuard):
    async def start(self) -> None:
        raise RuntimeError("vectors missing: run calibrate")


async def test_readyz_reports_start_failure() -> None:
    with serve_in_thread(BrokenGuard()) as server:
        status, body, _ = await asyncio.to_thread(get, server.http + "/readyz")
    assert status == 503
    assert "vectors missing: run calibrate" in json.loads(body)["reason"]


def _port() -> int:
    from sarsteer_guard.server.testing import free_port

    return free_port()


def test_tokens_compare_by_role() -> None:
    tokens = TokenSet.from_tokens([WORKER], [READ])
    assert tokens.role_of(WORKER) == "worker"
    assert tokens.role_of(READ) == "read"
    assert tokens.role_of(WORKER[:-1]) is None
    assert tokens.role_of(None) is None
    assert WORKER not in repr(tokens)  # only digests are kept


def test_short_tokens_are_refused() -> None:
    with pytest.raises(ServerConfigError, match=r"secrets\.token_urlsafe"):
        TokenSet.from_tokens(["short"])


def test_token_file_lines_and_json(tmp_path: Path) -> None:
    lines = tmp_path / "tokens"
    lines.write_text(f"# rotated weekly\nworker: {WORKER}\nworker: {WORKER}2\nread: {READ}\n")
    lines.chmod(0o600)
    tokens = load_tokens(lines, environ={})
    assert tokens.role_of(WORKER + "2") == "worker"
    assert tokens.role_of(READ) == "read"
    as_json = tmp_path / "tokens.json"
    as_json.write_text(json.dumps({"worker": [WORKER], "read": READ}))
    assert load_tokens(as_json, environ={}).role_of(READ) == "read"
    bad = tmp_path / "bad"
    bad.write_text("admin: " + WORKER)
    with pytest.raises(ServerConfigError, match=r"bad:1: expected 'worker: TOKEN'"):
        load_tokens(bad, environ={})


def test_tokens_from_environment() -> None:
    tokens = load_tokens(None, environ={"SARSTEER_GUARD_TOKEN": WORKER})
    assert tokens.role_of(WORKER) == "worker"
    assert not load_tokens(None, environ={}).configured


def test_public_host_needs_a_worker_token() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")  # noqa: S104 - the case under test
    with pytest.raises(
        ServerConfigError, match=r"refusing to listen on 0\.0\.0\.0 without a worker"
    ):
        ServerSettings(host="0.0.0.0").check()  # noqa: S104
    ServerSettings(host="0.0.0.0", tokens=TokenSet.from_tokens([WORKER])).check()  # noqa: S104


def test_cli_refuses_public_host_without_token() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SARSTEER_GUARD_")}
    result = subprocess.run(
        [sys.executable, "-m", "sarsteer_guard", "serve", "--scripted", "--host", "0.0.0.0"],  # noqa: S104
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sarsteer-guard: error: refusing to listen on 0.0.0.0")
