"""Sessions across guard replicas behind haproxy, on loopback: errors, latency, turns/s.

``--sessions`` concurrent voice sessions (one RemoteGuard connection each, as separate
voice workers would have), ``--turns`` turns of espeak-ng speech each, back to back,
first against ONE replica (through haproxy, same path), then against TWO replicas behind
haproxy running deploy/haproxy.cfg (Docker DNS swapped for the loopback replicas). The
replicas are real ``sarsteer-guard serve`` processes; ``--model scripted`` (default)
serves the ScriptedGuard, so what is measured is the serving path (sockets, protocol,
load balancer), not a model; ``--model tiny`` serves the real Guard (on 2 shared CPU
cores the replicas then compete for the same cores: meaningful on a GPU host only).

Per turn: end of speech (``turn.end`` sent, RemoteGuard's ``on_turn_sent``) to the first
text delta. Prints one JSON object; exit status 1 if any turn failed.

Run: .venv/bin/python bench/bench_realtime_fleet.py [--sessions 64] [--turns 5]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, base_parser, emit, latency_summary, machine_info, quiet_logs

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.guard.events import TextDelta, Turn, TurnDecision
from sarsteer_guard.remote import RemoteGuard
from sarsteer_guard.server.testing import free_port
from sarsteer_guard.testing.speech import synthesize

SENTENCES = (
    "How do I bake a loaf of bread at home?",
    "What is the capital of France?",
    "Tell me a short story about a friendly robot.",
    "How can I improve my sleep?",
    "What should I pack for a weekend hike?",
)


def wait_ready(port: int, proc: subprocess.Popen[bytes], limit_s: float = 300.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"replica on {port} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"replica on {port} not ready in {limit_s} s")


@contextmanager
def replica(model: str) -> Iterator[int]:
    port = free_port()
    args = (
        ["--scripted", "--scripted-delay-s", "0.02"] if model == "scripted" else ["--model", model]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SARSTEER_GUARD_")}
    env["SARSTEER_LOG_LEVEL"] = "WARNING"
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        [
            sys.executable,
            "-m",
            "sarsteer_guard",
            "serve",
            "--port",
            str(port),
            "--rate-limit",
            "0",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )
    try:
        wait_ready(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def haproxy_config(port: int, replicas: list[int]) -> str:
    """deploy/haproxy.cfg with the Docker DNS parts replaced by loopback replicas."""
    out, skip = [], False
    for line in (REPO / "deploy" / "haproxy.cfg").read_text().splitlines():
        if line.startswith("resolvers "):
            skip = True
            continue
        if skip and line.startswith("    "):
            continue
        skip = False
        stripped = line.strip()
        if stripped == "bind :8765":
            line = f"    bind 127.0.0.1:{port}"
        elif stripped.startswith("default-server"):
            line = "    default-server inter 500ms fall 2 rise 1"
        elif stripped.startswith("server-template"):
            line = "\n".join(f"    server r{n} 127.0.0.1:{p} check" for n, p in enumerate(replicas))
        elif stripped.startswith("log stdout"):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


@contextmanager
def haproxy(replicas: list[int]) -> Iterator[int]:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(haproxy_config(port, replicas))
        proc = subprocess.Popen(  # noqa: S603 - the system haproxy, our config
            [binary, "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)  # listening and first health checks
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def session(url: str, n: int, turns: int, audio: list[bytes], out: dict[str, Any]) -> None:
    sent: dict[str, float] = {}
    guard = RemoteGuard(url, on_turn_sent=lambda tid: sent.__setitem__(tid, time.perf_counter()))
    try:
        for k in range(turns):
            turn = Turn(
                audio=audio[(n + k) % len(audio)], session_id=f"bench-{n}", turn_id=f"s{n}t{k}"
            )
            first = None
            final: object = None
            async for event in guard.respond(turn):
                if isinstance(event, TextDelta) and first is None:
                    first = time.perf_counter() - sent[turn.turn_id]
                final = event
            if isinstance(final, TurnDecision) and first is not None:
                out["first"].append(first)
            else:
                out["errors"].append(repr(final)[:200])
    finally:
        await guard.close()


async def load(url: str, sessions: int, turns: int, audio: list[bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {"first": [], "errors": []}
    started = time.perf_counter()
    await asyncio.gather(*(session(url, n, turns, audio, out) for n in range(sessions)))
    wall = time.perf_counter() - started
    return {
        "turns": sessions * turns,
        "errors": len(out["errors"]),
        "error_examples": out["errors"][:3],
        "end_of_speech_to_first_token": latency_summary(out["first"]) if out["first"] else None,
        "wall_s": round(wall, 2),
        "turns_per_s": round(len(out["first"]) / wall, 2),
    }


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--model", default="scripted", help="scripted (default) or a model name")
    args = parser.parse_args()
    quiet_logs()
    audio = [float_to_pcm16(synthesize(s, rate=16000)) for s in SENTENCES]
    runs: dict[str, Any] = {}
    with ExitStack() as stack:
        ports = [stack.enter_context(replica(args.model)) for _ in range(2)]
        for name, members in (("one_replica", ports[:1]), ("two_replicas", ports)):
            with haproxy(members) as lb:
                url = f"ws://127.0.0.1:{lb}/v1/turns"
                runs[name] = asyncio.run(load(url, args.sessions, args.turns, audio))
    one, two = runs["one_replica"]["turns_per_s"], runs["two_replicas"]["turns_per_s"]
    result = {
        "benchmark": "realtime_fleet",
        "guard": "ScriptedGuard (serve --scripted, 0.02 s/word)"
        if args.model == "scripted"
        else args.model,
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        **runs,
        "throughput_ratio_two_vs_one": round(two / one, 3) if one else None,
        "goal_zero_errors_met": all(r["errors"] == 0 for r in runs.values()),
        "machine": machine_info(),
    }
    emit(result, args.out)
    return 0 if result["goal_zero_errors_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
