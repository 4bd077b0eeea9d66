"""Two real ``sarsteer-guard serve`` processes behind one RemoteGuard: kill -9 and drain.

The kill test runs the real Guard (tiny model) in both replicas, sharing session history
through Redis (``SARSTEER_HISTORY_URL``): a conversation runs on replica A, A is killed
with SIGKILL mid-turn, the turn ends with a clean ``connection`` error, and the next turn
goes to replica B, which continues the same history. The drain test uses the scripted
guard: SIGTERM on A lets its in-flight turn finish while new turns go to B.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
import redis
from _realtime_kit import needs_espeak
from test_realtime_fleet_history import REDIS_URL, redis_up
from test_server_shutdown import wait_listening

from sarsteer_guard.guard.events import TextDelta, Turn, TurnDecision, TurnError
from sarsteer_guard.remote import RemoteGuard
from sarsteer_guard.server.testing import free_port
from sarsteer_guard.testing.speech import synthesize

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not redis_up(), reason=f"no Redis at {REDIS_URL}"),
]

POLICY = """\
name: fleet-test
version: "1"
model: "*"
calibration:
  k: 10
  lambda: 1.0
defaults:
  preset: balanced
audit:
  record: all
  keep_audio: false
"""

QUESTIONS = (
    "How do I bake bread at home?",
    "What is the capital of France?",
    "Tell me a story about a robot.",
    "How can I sleep better?",
)


@contextmanager
def replica(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """One ``serve`` process on a free loopback port; killed at the end if still alive."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SARSTEER_GUARD_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sarsteer_guard", "serve", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**clean, "SARSTEER_LOG_JSON": "1", **(env or {})},
    )
    try:
        wait_listening(port, proc)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def wait_ready(port: int, limit_s: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"replica on {port} not ready in {limit_s} s")


def served_turns(port: int) -> float:
    """``sarsteer_server_turns_total`` summed over outcomes, from the replica's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sarsteer_server_turns_total{")
    )


async def eventually(predicate: Callable[[], bool], limit_s: float = 10.0) -> None:
    for _ in range(int(limit_s / 0.1)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true within {limit_s} s")


def audit_ids(path: Path) -> set[str]:
    """Record ids in a replica's SQLite audit log (a decision's ``audit_id``)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return {row[0] for row in db.execute("SELECT id FROM audit_records")}
    except sqlite3.OperationalError:  # not created yet (the log opens on first use)
        return set()


async def run_turn(guard: RemoteGuard, turn: Turn) -> list[object]:
    return [event async for event in guard.respond(turn)]


def speech_turn(text: str, session_id: str, n: int) -> Turn:
    pcm = (np.clip(synthesize(text, rate=16000), -1, 1) * 32767).astype("<i2").tobytes()
    return Turn(
        audio=pcm, session_id=session_id, turn_id=f"t{n}-{uuid.uuid4().hex[:8]}", max_new_tokens=8
    )


@needs_espeak
async def test_kill_9_mid_turn_loses_no_history(tmp_path: Path) -> None:
    session = f"fleet-{uuid.uuid4().hex}"
    env = {"SARSTEER_HISTORY_URL": REDIS_URL}
    audit_a, audit_b = tmp_path / "a.db", tmp_path / "b.db"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    history = redis.Redis.from_url(REDIS_URL)
    key = f"sarsteer:history:x:{session}"  # the exchanges (history_redis key layout)
    with ExitStack() as stack:
        a, port_a = stack.enter_context(
            replica(
                "--model",
                "tiny",
                "--policy",
                str(policy),
                "--audit",
                f"sqlite:///{audit_a}",
                env=env,
            )
        )
        _b, port_b = stack.enter_context(
            replica(
                "--model",
                "tiny",
                "--policy",
                str(policy),
                "--audit",
                f"sqlite:///{audit_b}",
                env=env,
            )
        )
        wait_ready(port_a)
        wait_ready(port_b)
        guard = RemoteGuard(
            [f"ws://127.0.0.1:{port_a}/v1/turns", f"ws://127.0.0.1:{port_b}/v1/turns"],
            backoff_base_s=0.05,
        )
        try:
            decided: list[TurnDecision] = []
            for n in (0, 1):  # two turns on replica A
                events = await run_turn(guard, speech_turn(QUESTIONS[n], session, n))
                assert isinstance(events[-1], TurnDecision), events[-1]
                decided.append(events[-1])
            assert served_turns(port_a) == 2
            assert history.llen(key) == 2

            # Turn 3: A dies after the turn is sent, before its decision.
            turn = speech_turn(QUESTIONS[2], session, 2)
            killed = asyncio.Event()
            events3: list[object] = []
            async for event in guard.respond(turn):
                events3.append(event)
                if not killed.is_set():
                    a.send_signal(signal.SIGKILL)
                    killed.set()
            # (the first event is at most a delta: the kill lands before the decision)
            assert isinstance(events3[-1], TurnError), events3
            assert events3[-1].kind == "connection"
            assert all(isinstance(e, TextDelta) for e in events3[:-1])
            a.wait(timeout=10)

            # Turn 4 fails over to B, which continues the history A wrote.
            events = await run_turn(guard, speech_turn(QUESTIONS[3], session, 3))
            assert isinstance(events[-1], TurnDecision), events[-1]
            decided.append(events[-1])
            assert guard.url.endswith(f":{port_b}/v1/turns")
            assert served_turns(port_b) == 1
            assert history.llen(key) == 3  # A's two exchanges kept, B's appended
            replies = [b.partition(b"\n")[0] for b in history.lrange(key, 0, -1)]
            assert all(b'"reply"' in r for r in replies)
            # Every decided turn has its audit record on the replica that served it (A's
            # were written before the kill; B's is polled for: the writer is asynchronous).
            assert all(d.audit_id for d in decided)
            assert {d.audit_id for d in decided[:2]} <= audit_ids(audit_a)
            await eventually(lambda: decided[2].audit_id in audit_ids(audit_b))
        finally:
            await guard.close()
            history.delete(key, f"sarsteer:history:m:{session}")
            history.zrem("sarsteer:history:sessions", session)


async def test_sigterm_drains_one_replica_while_the_other_takes_new_turns() -> None:
    reply = " ".join(["word"] * 20)  # 20 x 0.05 s = 1 s: in flight when SIGTERM lands
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
        guard = RemoteGuard(
            [f"ws://127.0.0.1:{port_a}/v1/turns", f"ws://127.0.0.1:{port_b}/v1/turns"],
            backoff_base_s=0.05,
        )
        pcm = b"\x00\x00" * 16000
        try:
            in_flight = asyncio.ensure_future(
                run_turn(guard, Turn(audio=pcm, session_id="s", turn_id="long"))
            )
            await asyncio.sleep(0.3)
            a.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            # While A drains, a new caller is refused by A (503) and served by B.
            newcomer = RemoteGuard(
                [f"ws://127.0.0.1:{port_a}/v1/turns", f"ws://127.0.0.1:{port_b}/v1/turns"],
                backoff_base_s=0.05,
            )
            try:
                fresh = await run_turn(newcomer, Turn(audio=pcm, session_id="n", turn_id="new"))
                assert isinstance(fresh[-1], TurnDecision), fresh[-1]
                assert newcomer.url.endswith(f":{port_b}/v1/turns")
            finally:
                await newcomer.close()
            events = await in_flight
            assert isinstance(events[-1], TurnDecision)  # finished inside the grace period
            assert events[-1].text == reply
            # A closes the socket (1001) after draining and exits; the next turn goes to B.
            # (Wait for the exit: a turn sent in the instant A's close frame is in flight is
            # lost with a `connection` error by design; the client decides whether to retry.)
            assert await asyncio.to_thread(a.wait, 15) == 0
            after = await run_turn(guard, Turn(audio=pcm, session_id="s", turn_id="next"))
            assert isinstance(after[-1], TurnDecision), after[-1]
            assert guard.url.endswith(f":{port_b}/v1/turns")
        finally:
            await guard.close()
