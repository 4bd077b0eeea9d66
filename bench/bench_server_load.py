"""Load test of the WebSocket server: many voice sessions through RemoteGuard, real speech.

A bounded run on loopback only (it stops by itself): a real ``sarsteer-guard serve``
subprocess with the real Guard and the tiny model (falling back to the test-only
ScriptedGuard only if the Guard cannot start, which the JSON says), and ``--sessions``
concurrent sessions, each with its own RemoteGuard connection as separate voice
workers would have, sending ``--turns`` turns of espeak-ng speech back to back. The
server keeps each session's history, as in production, so later turns carry earlier
ones in the prompt.

Per turn: ``end_to_first_token`` = ``turn.end`` sent (end of speech as the server sees
it) to the first TextDelta received; ``total`` = ``turn.end`` sent to the decision.
Asserts zero errors (exit status 1 otherwise). Prints one JSON object.

Run: .venv/bin/python bench/bench_server_load.py [--sessions 32] [--turns 5] [--max-new-tokens 16]
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, base_parser, emit, latency_summary, machine_info, quiet_logs

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.guard.events import TextDelta, Turn, TurnDecision, TurnError
from sarsteer_guard.log import configure_logging
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


def ready(port: int) -> dict[str, Any] | None:
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except (urllib.error.URLError, OSError):
        return None


def start_server(port: int, scripted: bool, log_path: Path, args: Any) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "sarsteer_guard", "serve", "--port", str(port)]
    cmd += ["--rate-limit", "0", "--max-batch-size", str(args.max_batch_size)]
    cmd += ["--max-queue", "256", "--turn-timeout-s", "300", "--shutdown-grace-s", "5"]
    if scripted:
        cmd += ["--scripted", "--scripted-delay-s", "0.01"]
    else:
        cmd += ["--model", "tiny"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SARSTEER_GUARD_")}
    env["SARSTEER_LOG_LEVEL"] = "WARNING"
    with log_path.open("ab") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log)  # noqa: S603


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        body = ready(port)
        if body is not None and body.get("ready"):
            return True
        time.sleep(0.25)
    return False


async def session(
    index: int,
    url: str,
    clips: list[bytes],
    args: Any,
    results: list[dict[str, Any]],
) -> None:
    sent: dict[str, float] = {}
    remote = RemoteGuard(
        url, on_turn_sent=lambda turn_id: sent.__setitem__(turn_id, time.perf_counter())
    )
    async with remote:
        for number in range(args.turns):
            turn = Turn(
                audio=clips[(index + number) % len(clips)],
                session_id=f"load-{index}",
                max_new_tokens=args.max_new_tokens,
            )
            first: float | None = None
            outcome: dict[str, Any] = {"session": index, "turn": number}
            async for event in remote.respond(turn):
                now = time.perf_counter()
                if isinstance(event, TextDelta) and first is None:
                    first = now
                elif isinstance(event, TurnDecision):
                    outcome["total_s"] = now - sent[turn.turn_id]
                    outcome["tokens"] = event.tokens
                    outcome["server_first_token_ms"] = event.timings.first_token_ms
                elif isinstance(event, TurnError):
                    outcome["error"] = f"{event.kind}: {event.message}"
            if first is not None and turn.turn_id in sent:
                outcome["first_token_s"] = first - sent[turn.turn_id]
            results.append(outcome)


async def run_load(url: str, clips: list[bytes], args: Any) -> tuple[list[dict[str, Any]], float]:
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(session(i, url, clips, args, results) for i in range(args.sessions))),
        timeout=args.max_seconds,
    )
    return results, time.perf_counter() - started


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard stop for the load")
    parser.add_argument("--scripted", action="store_true", help="force the ScriptedGuard")
    args = parser.parse_args()
    quiet_logs()
    configure_logging(level="WARNING")  # the client's per-connection logs, too
    clips = [float_to_pcm16(synthesize(text)) for text in SENTENCES]
    speech_s = [len(c) / 2 / 16000 for c in clips]
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/turns"
    note = None
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        scripted = args.scripted
        proc = start_server(port, scripted, log_path, args)
        if not scripted and not wait_ready(proc, port, timeout_s=300):
            proc.kill()
            proc.wait()
            tail = log_path.read_text(errors="replace")[-600:]
            note = f"the real Guard did not become ready; ScriptedGuard used. Server log: {tail}"
            scripted = True
            port = free_port()
            url = f"ws://127.0.0.1:{port}/v1/turns"
            proc = start_server(port, scripted, log_path, args)
            wait_ready(proc, port, timeout_s=60)
        elif scripted:
            wait_ready(proc, port, timeout_s=60)
        try:
            results, wall = asyncio.run(run_load(url, clips, args))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    errors = [r for r in results if "error" in r or "total_s" not in r]
    first = [r["first_token_s"] for r in results if "first_token_s" in r]
    total = [r["total_s"] for r in results if "total_s" in r]
    kinds = collections.Counter(str(r.get("error", "no decision")).split(":")[0] for r in errors)
    result: dict[str, Any] = {
        "benchmark": "server_load",
        "guard": "scripted" if scripted else "real",
        "model": None if scripted else "tiny",
        "note": note,
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        "turns": len(results),
        "max_new_tokens": args.max_new_tokens,
        "max_batch_size": args.max_batch_size,
        "speech_s_per_turn": [round(s, 2) for s in speech_s],
        "errors": len(errors),
        "error_kinds": dict(kinds),
        "end_to_first_token": latency_summary(first) if first else None,
        "total": latency_summary(total) if total else None,
        "wall_s": round(wall, 1),
        "turns_per_s": round(len(results) / wall, 2) if wall else None,
        "machine": machine_info(),
    }
    emit(result, args.out)
    assert len(results) == args.sessions * args.turns, "not every turn ran"
    if errors:
        print(f"FAILED: {len(errors)} turns failed: {dict(kinds)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
