"""deploy/haproxy.cfg and the compose wiring, and haproxy itself in front of two replicas.

The loopback test runs Debian's haproxy with deploy/haproxy.cfg, its Docker DNS
``server-template`` swapped for the two local replicas (everything else as shipped):
WebSockets of both protocols pass through it, and a replica that starts draining
(``/readyz`` 503) stops getting new connections while the other takes them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_realtime_fleet_fault import replica, wait_ready
from test_server_shutdown import wait_listening
from websockets.asyncio.client import connect

from sarsteer_guard.server.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="apt-get install haproxy")


def test_compose_runs_two_replicas_behind_the_load_balancer() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    guard, lb = compose["services"]["guard"], compose["services"]["lb"]
    assert guard["deploy"]["replicas"] == 2
    assert "ports" not in guard  # replicas are reached through the load balancer only
    assert guard["environment"]["SARSTEER_HISTORY_URL"].startswith("redis://")
    assert guard["environment"]["SARSTEER_HISTORY_URL"].endswith("@redis-history:6379/0")
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in lb["volumes"]
    assert lb["depends_on"]["guard"]["condition"] == "service_healthy"
    cfg = HAPROXY_CFG.read_text()
    assert "option httpchk GET /readyz" in cfg
    assert "server-template guard" in cfg
    assert "guard:8765" in cfg
    settings = [line for line in cfg.splitlines() if not line.lstrip().startswith("#")]
    assert not any("shutdown-sessions" in line for line in settings)  # drains finish turns


@needs_haproxy
def test_haproxy_accepts_the_shipped_config() -> None:
    assert HAPROXY is not None
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def loopback_config(port: int, replicas: list[int]) -> str:
    """The shipped config with its Docker-only parts replaced by loopback replicas."""
    lines, out, skip = HAPROXY_CFG.read_text().splitlines(), [], False
    for line in lines:
        if line.startswith("resolvers "):
            skip = True
            continue
        if skip and line.startswith("    "):
            continue
        skip = False
        if line.strip() == "bind :8765":
            line = f"    bind 127.0.0.1:{port}"
        elif line.strip().startswith("default-server"):
            line = "    default-server inter 200ms fall 1 rise 1"
        elif line.strip().startswith("server-template"):
            line = "\n".join(f"    server r{n} 127.0.0.1:{p} check" for n, p in enumerate(replicas))
        elif line.strip().startswith("log stdout"):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


@contextmanager
def haproxy(tmp_path: Path, replicas: list[int]) -> Iterator[int]:
    assert HAPROXY is not None
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(loopback_config(port, replicas))
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, proc)  # type: ignore[arg-type]
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


#: 0.1 s of 16 kHz int16 silence: the shortest turn the server accepts.
TENTH_B64 = base64.b64encode(bytes(3200)).decode()


async def hello(url: str) -> dict[str, Any]:
    async with connect(url) as ws:
        first: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
        return first


@needs_haproxy
async def test_websockets_pass_and_a_draining_replica_gets_no_new_connections(
    tmp_path: Path,
) -> None:
    reply = " ".join(["word"] * 60)  # 60 x 0.05 s = 3 s: A drains while this streams
    scripted = (
        "--scripted",
        "--scripted-delay-s",
        "0.05",
        "--scripted-reply",
        reply,
        "--shutdown-grace-s",
        "10",
    )
    with replica(*scripted) as (a, port_a), replica(*scripted) as (_b, port_b):
        wait_ready(port_a)
        wait_ready(port_b)
        with haproxy(tmp_path, [port_a, port_b]) as lb:
            await asyncio.sleep(0.5)  # first health checks
            assert (await hello(f"ws://127.0.0.1:{lb}/v1/turns"))["type"] == "hello"
            assert (await hello(f"ws://127.0.0.1:{lb}/v1/realtime?model=m"))[
                "type"
            ] == "session.created"
            # Hold a streaming turn open on A directly, then SIGTERM A: it drains.
            async with connect(f"ws://127.0.0.1:{port_a}/v1/turns") as held:
                await held.recv()
                await held.send(json.dumps({"type": "turn.start", "turn_id": "t"}))
                await held.send(
                    json.dumps({"type": "turn.audio", "turn_id": "t", "audio_b64": TENTH_B64})
                )
                await held.send(json.dumps({"type": "turn.end", "turn_id": "t"}))
                assert json.loads(await held.recv())["type"] == "delta"
                a.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.8)  # /readyz 503 seen by the health check
                for _ in range(6):  # every new connection through the LB lands on B
                    assert (await hello(f"ws://127.0.0.1:{lb}/v1/turns"))["type"] == "hello"
                while (message := json.loads(await held.recv()))["type"] == "delta":
                    pass
                assert message["type"] == "decision"  # A's open turn finished in the drain
            assert a.wait(timeout=15) == 0
            started = time.monotonic()
            assert (await hello(f"ws://127.0.0.1:{lb}/v1/realtime?model=m"))[
                "type"
            ] == "session.created"
            assert time.monotonic() - started < 5


def test_remote_guard_takes_several_urls() -> None:
    from sarsteer_guard.errors import GuardOptionsError
    from sarsteer_guard.remote import RemoteGuard

    assert RemoteGuard("ws://a:1/v1/turns, ws://b:2/v1/turns").urls == [
        "ws://a:1/v1/turns",
        "ws://b:2/v1/turns",
    ]
    assert RemoteGuard(["ws://a:1/v1/turns"]).url == "ws://a:1/v1/turns"
    with pytest.raises(GuardOptionsError, match="needs a guard URL"):  # a config error (review 12)
        RemoteGuard(" , ")


async def test_remote_guard_moves_on_at_once_when_a_replica_is_down() -> None:
    from sarsteer_guard.guard.events import Turn, TurnDecision
    from sarsteer_guard.remote import RemoteGuard
    from sarsteer_guard.server.scripted import ScriptedGuard
    from sarsteer_guard.server.testing import serve_in_thread

    dead = f"ws://127.0.0.1:{free_port()}/v1/turns"
    with serve_in_thread(ScriptedGuard()) as live:
        guard = RemoteGuard([dead, live.url], backoff_base_s=5.0)  # a backoff would show
        try:
            started = time.monotonic()
            events = [e async for e in guard.respond(Turn(audio=b"\x00\x00" * 1600))]
            assert time.monotonic() - started < 2.0
        finally:
            await guard.close()
    assert isinstance(events[-1], TurnDecision)
    assert guard.url == live.url
